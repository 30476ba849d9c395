"""Kronos: the decoder-only Transformer that predicts the next (s1, s2) token pair of a K-line series."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import KronosInputError
from .checks import check_same_shape, check_token_ids
from .hub import HubModelMixin
from .layers import CrossAttention, KVCache, RMSNorm, TransformerBlock

#: Sizes of the time-feature embeddings, in the order of the stamp columns.
TIME_FEATURES = {"minute": 60, "hour": 24, "weekday": 7, "day": 32, "month": 13}


class HierarchicalEmbedding(nn.Module):
    """Embeds the coarse and fine token separately, scales by sqrt(d_model) and fuses them linearly."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.emb_s1 = nn.Embedding(2 ** s1_bits, d_model)
        self.emb_s2 = nn.Embedding(2 ** s2_bits, d_model)
        self.fusion_proj = nn.Linear(2 * d_model, d_model)

    def forward(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor) -> torch.Tensor:
        scale = math.sqrt(self.d_model)
        return self.fusion_proj(torch.cat([self.emb_s1(s1_ids) * scale, self.emb_s2(s2_ids) * scale], dim=-1))


class SinusoidalEmbedding(nn.Module):
    """Fixed sin/cos table, used for time features when ``learn_te`` is false."""

    def __init__(self, size: int, d_model: int):
        super().__init__()
        position = torch.arange(size).float().unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model))
        table = torch.zeros(size, d_model)
        table[:, 0::2] = torch.sin(position * div_term)
        table[:, 1::2] = torch.cos(position * div_term)
        self.emb = nn.Embedding(size, d_model)
        self.emb.weight = nn.Parameter(table, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emb(x).detach()


class TemporalEmbedding(nn.Module):
    """Sum of the embeddings of [minute, hour, weekday (Monday = 0), day, month]."""

    def __init__(self, d_model: int, learn_te: bool):
        super().__init__()
        make = nn.Embedding if learn_te else SinusoidalEmbedding
        for name, size in TIME_FEATURES.items():
            setattr(self, f"{name}_embed", make(size, d_model))

    def forward(self, stamp: torch.Tensor) -> torch.Tensor:
        """Unchecked: callers validate with :func:`check_stamp` (a check syncs a GPU with the host)."""
        stamp = stamp.long()
        return sum(getattr(self, f"{name}_embed")(stamp[..., i]) for i, name in enumerate(TIME_FEATURES))


def check_stamp(stamp: torch.Tensor) -> None:
    """Every time feature must index its embedding table; one host sync unless a value is out of range."""
    stamp = stamp.long()
    sizes = torch.tensor(list(TIME_FEATURES.values()), device=stamp.device)
    if stamp.numel() and bool(((stamp < 0) | (stamp >= sizes)).any()):
        for i, (name, size) in enumerate(TIME_FEATURES.items()):
            column = stamp[..., i]
            if int(column.min()) < 0 or int(column.max()) >= size:
                raise KronosInputError(f"time feature '{name}' must lie in [0, {size}), got values in "
                                       f"[{int(column.min())}, {int(column.max())}]")


class DependencyAwareLayer(nn.Module):
    """Conditions the s2 prediction on an s1 token: RMSNorm(hidden + cross_attn(emb_s1(s1), hidden))."""

    def __init__(self, d_model: int, n_heads: int = 4):
        super().__init__()
        self.cross_attn = CrossAttention(d_model, n_heads)
        self.norm = RMSNorm(d_model)

    def forward(self, hidden: torch.Tensor, sibling_embed: torch.Tensor, causal: bool | None = None
                ) -> torch.Tensor:
        attended = self.cross_attn(sibling_embed, hidden, causal)
        # A one-token query is the generation step: only the last position's output means anything.
        return self.norm(hidden[:, -attended.shape[1]:] + attended)


class DualHead(nn.Module):
    """s1 and s2 logits from two linear projections."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.proj_s1 = nn.Linear(d_model, 2 ** s1_bits)
        self.proj_s2 = nn.Linear(d_model, 2 ** s2_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_s1(x)

    def cond_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_s2(x)

    @staticmethod
    def compute_loss(s1_logits: torch.Tensor, s2_logits: torch.Tensor, s1_targets: torch.Tensor,
                     s2_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(CE_s1 + CE_s2) / 2 over every position, with both parts returned for logging."""
        ce_s1 = F.cross_entropy(s1_logits.reshape(-1, s1_logits.shape[-1]).float(), s1_targets.reshape(-1))
        ce_s2 = F.cross_entropy(s2_logits.reshape(-1, s2_logits.shape[-1]).float(), s2_targets.reshape(-1))
        return (ce_s1 + ce_s2) / 2, ce_s1, ce_s2


class PredictorCache:
    """What generation keeps between steps: each block's keys/values and the dependency layer's memory."""

    def __init__(self, n_layers: int, capacity: int):
        self.layers = [KVCache(capacity) for _ in range(n_layers)]
        self.dependency = KVCache(capacity)

    def share_prefix(self, copies: int, capacity: int) -> None:
        """Let ``copies`` consecutive sequences (sample paths) share what is cached so far; see KVCache."""
        for cache in (*self.layers, self.dependency):
            cache.share_prefix(copies, capacity)


class Kronos(nn.Module, HubModelMixin):
    """Autoregressive predictor over hierarchical (s1, s2) tokens with a learned time embedding.

    Constructor arguments are exactly the keys of the released ``config.json``.
    """

    def __init__(self, s1_bits: int, s2_bits: int, n_layers: int, d_model: int, n_heads: int, ff_dim: int,
                 ffn_dropout_p: float, attn_dropout_p: float, resid_dropout_p: float, token_dropout_p: float,
                 learn_te: bool):
        super().__init__()
        self.s1_bits, self.s2_bits = s1_bits, s2_bits
        self.s1_vocab_size, self.s2_vocab_size = 2 ** s1_bits, 2 ** s2_bits
        self.n_layers, self.d_model = n_layers, d_model
        self.embedding = HierarchicalEmbedding(s1_bits, s2_bits, d_model)
        self.time_emb = TemporalEmbedding(d_model, learn_te)
        self.token_drop = nn.Dropout(token_dropout_p)
        self.transformer = nn.ModuleList(
            TransformerBlock(d_model, n_heads, ff_dim, ffn_dropout_p, attn_dropout_p, resid_dropout_p)
            for _ in range(n_layers)
        )
        self.norm = RMSNorm(d_model)
        self.dep_layer = DependencyAwareLayer(d_model)
        self.head = DualHead(s1_bits, s2_bits, d_model)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.weight.requires_grad:
            nn.init.normal_(module.weight, mean=0.0, std=self.d_model ** -0.5)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def new_cache(self, capacity: int) -> PredictorCache:
        """An empty cache for up to ``capacity`` positions, for :meth:`decode_s1` / :meth:`decode_s2`."""
        return PredictorCache(self.n_layers, capacity)

    def _check_tokens(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None) -> None:
        check_same_shape(s1_ids, s2_ids, "s1_ids", "s2_ids")
        if s1_ids.ndim != 2:
            raise KronosInputError(f"token ids must have shape (batch, length), got {tuple(s1_ids.shape)}")
        check_token_ids(s1_ids, self.s1_vocab_size, "s1_ids")
        check_token_ids(s2_ids, self.s2_vocab_size, "s2_ids")
        if stamp is not None:
            if tuple(stamp.shape) != (*s1_ids.shape, len(TIME_FEATURES)):
                raise KronosInputError(f"stamp must have shape (batch, length, {len(TIME_FEATURES)}) matching "
                                       f"the token ids {tuple(s1_ids.shape)}, got {tuple(stamp.shape)}")
            check_stamp(stamp)

    def _trunk(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None,
               cache: PredictorCache | None = None) -> torch.Tensor:
        x = self.embedding(s1_ids, s2_ids)
        if stamp is not None:
            x = x + self.time_emb(stamp)
        x = self.token_drop(x)
        for i, block in enumerate(self.transformer):
            x = block(x, None if cache is None else cache.layers[i])
        return self.norm(x)

    def forward(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None = None,
                use_teacher_forcing: bool = False, s1_targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """s1 and s2 logits for every position, the training objective's inputs.

        s2 is conditioned on ``s1_targets`` with teacher forcing, otherwise on s1 tokens sampled from the s1
        logits. The conditioning is causal in train and eval alike, so a validation loss sees no future token.
        """
        self._check_tokens(s1_ids, s2_ids, stamp)
        context = self._trunk(s1_ids, s2_ids, stamp)
        s1_logits = self.head(context)
        if use_teacher_forcing:
            if s1_targets is None:
                raise KronosInputError("use_teacher_forcing=True needs s1_targets")
            check_same_shape(s1_targets, s1_ids, "s1_targets", "s1_ids")
            check_token_ids(s1_targets, self.s1_vocab_size, "s1_targets")
            condition = s1_targets
        else:
            probs = F.softmax(s1_logits.detach().float(), dim=-1)
            condition = torch.multinomial(probs.reshape(-1, self.s1_vocab_size), 1).view(s1_ids.shape)
        s2_logits = self.head.cond_forward(self.dep_layer(context, self.embedding.emb_s1(condition), causal=True))
        return s1_logits, s2_logits

    def hidden_states(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """The final normed hidden state of every position (batch, length, d_model): what a return head reads."""
        self._check_tokens(s1_ids, s2_ids, stamp)
        return self._trunk(s1_ids, s2_ids, stamp)

    def next_token_loss_and_states(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher-forced next-token loss over the sequence and every position's final hidden state, from one
        pass of the trunk: it is causal, so its first ``length - 1`` states are those ``forward`` computes on
        ``s1_ids[:, :-1]`` (the joint head variant trains on both)."""
        self._check_tokens(s1_ids, s2_ids, stamp)
        context = self._trunk(s1_ids, s2_ids, stamp)
        s1_logits = self.head(context[:, :-1])
        s2_logits = self.head.cond_forward(self.dep_layer(context[:, :-1], self.embedding.emb_s1(s1_ids[:, 1:]),
                                                          causal=True))
        return self.compute_loss(s1_logits, s2_logits, s1_ids[:, 1:], s2_ids[:, 1:])[0], context

    def compute_loss(self, s1_logits: torch.Tensor, s2_logits: torch.Tensor, s1_targets: torch.Tensor,
                     s2_targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, CE_s1, CE_s2) with loss = (CE_s1 + CE_s2) / 2."""
        return self.head.compute_loss(s1_logits, s2_logits, s1_targets, s2_targets)

    def decode_s1(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None = None,
                  cache: PredictorCache | None = None, validate: bool = True, last: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(s1 logits, normed hidden states) of the given positions: the first half of a generation step.

        With ``cache`` the positions continue after those already cached, and their hidden states are
        projected into the dependency layer's memory for :meth:`decode_s2`. ``validate=False`` skips the
        input checks, which sync a GPU with the host: for a sampler that checked its inputs once. ``last``
        gives the logits of the last position only (batch, 1, vocab): all a sampler's prefill needs, and the
        head's projection of every context position is a tenth of a prefill's work.
        """
        if validate:
            self._check_tokens(s1_ids, s2_ids, stamp)
        context = self._trunk(s1_ids, s2_ids, stamp, cache)
        if cache is not None:
            cache.dependency.append(*self.dep_layer.cross_attn.project_memory(context))
        return self.head(context[:, -1:] if last else context), context

    def decode_s2(self, context: torch.Tensor, s1_ids: torch.Tensor, cache: PredictorCache | None = None,
                  validate: bool = True) -> torch.Tensor:
        """s2 logits conditioned on ``s1_ids``: the second half of a generation step.

        A one-token ``s1_ids`` (batch, 1) is the generation step: it attends to the whole window and the
        result, shape (batch, 1, vocab), is the logits of the last position. With ``s1_ids`` as long as the
        context, every position is conditioned on its own s1 token. With ``cache`` only the last hidden state
        of ``context`` is needed; the window's memory comes from the cache. ``validate`` as in :meth:`decode_s1`.
        """
        if validate:
            check_token_ids(s1_ids, self.s1_vocab_size, "s1_ids")
        sibling = self.embedding.emb_s1(s1_ids)
        if cache is None:
            return self.head.cond_forward(self.dep_layer(context, sibling))
        if s1_ids.shape[1] != 1:
            raise KronosInputError(f"with a cache, decode_s2 takes one s1 token per sequence, got {s1_ids.shape[1]}")
        attn = self.dep_layer.cross_attn
        attended = attn.merge_heads(cache.dependency.attend(attn.split_heads(attn.q_proj(sibling)), causal=False))
        return self.head.cond_forward(self.dep_layer.norm(context[:, -1:] + attended))
