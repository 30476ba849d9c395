"""Transformer building blocks shared by the Kronos tokenizer and predictor.

Module and parameter names follow the released checkpoints (``norm1``, ``self_attn.q_proj``, ``ffn.w1`` ...),
so a state dict from the Hugging Face Hub loads without renaming.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, KronosInputError


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32 (stable under bf16/fp16) and cast back."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU feed-forward: w2(silu(w1 x) * w3 x), bias-free, dropout on the output."""

    def __init__(self, d_model: int, ff_dim: int, ffn_dropout_p: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)
        self.ffn_dropout = nn.Dropout(ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class RotaryEmbedding(nn.Module):
    """Rotary positions in the "rotate half" form, base 10000.

    ``inv_freq`` is a persistent buffer because the released checkpoints store it.
    """

    def __init__(self, head_dim: int):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Rotate ``x`` (batch, heads, length, head_dim) as if it sat at positions start, start+1, ..."""
        positions = torch.arange(start, start + x.shape[-2], device=x.device, dtype=self.inv_freq.dtype)
        freqs = torch.outer(positions, self.inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class KVCache:
    """Keys and values of one attention layer, preallocated so that each step writes in place.

    After :meth:`share_prefix`, what is stored becomes a prefix shared by groups of consecutive sequences
    (the sample paths of one series): it is read, never copied, by every sequence of its group.
    ``length`` counts the positions each sequence sees; new positions continue the rotary numbering from there.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.stored = 0
        self.prefix_k: torch.Tensor | None = None
        self.prefix_v: torch.Tensor | None = None

    @property
    def prefix_length(self) -> int:
        return 0 if self.prefix_k is None else self.prefix_k.shape[-2]

    @property
    def length(self) -> int:
        return self.prefix_length + self.stored

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store (batch, heads, n, head_dim) keys and values after those already stored."""
        n = k.shape[-2]
        if self.stored + n > self.capacity:
            raise RuntimeError(f"KV cache overflow: {self.stored} + {n} positions > capacity {self.capacity}")
        if self.k is None:
            shape = (*k.shape[:-2], self.capacity, k.shape[-1])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        self.k[..., self.stored:self.stored + n, :] = k
        self.v[..., self.stored:self.stored + n, :] = v
        self.stored += n

    def share_prefix(self, copies: int, capacity: int) -> None:
        """Freeze the stored positions as a prefix of ``copies`` sequences each, with room for ``capacity`` more."""
        if self.prefix_k is not None:
            raise RuntimeError("the cache already has a shared prefix")
        if self.k is not None:
            self.prefix_k, self.prefix_v = self.k[..., :self.stored, :], self.v[..., :self.stored, :]
        self.k = self.v = None
        self.stored, self.capacity = 0, capacity

    def attend(self, q: torch.Tensor, causal: bool) -> torch.Tensor:
        """Attention of q (batch, heads, n, head_dim) over everything each sequence sees.

        With ``causal`` the n queries are the last n stored positions and see no position after their own.
        """
        k, v = (None, None) if self.k is None else (self.k[..., :self.stored, :], self.v[..., :self.stored, :])
        if self.prefix_k is None:
            if causal:
                return _causal_attention(q, k, v, 0.0)
            return F.scaled_dot_product_attention(q, k, v)
        # Grouped form: the S copies of a series put their queries side by side against its one prefix.
        groups, heads, n, dim = self.prefix_k.shape[0], q.shape[1], q.shape[2], q.shape[3]
        copies = q.shape[0] // groups

        def grouped(x: torch.Tensor) -> torch.Tensor:  # (groups*S, H, n, d) <-> (groups, H, S*n, d)
            return x.reshape(groups, copies, heads, n, -1).transpose(1, 2).reshape(groups, heads, copies * n, -1)

        def ungrouped(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(groups, heads, copies, n, -1).transpose(1, 2).reshape(groups * copies, heads, n, -1)

        scale = dim ** -0.5
        scores = [ungrouped(grouped(q) @ self.prefix_k.transpose(-1, -2))]
        if self.stored:
            own = q @ k.transpose(-1, -2)
            if causal and n > 1:
                hidden = torch.ones(n, self.stored, dtype=torch.bool, device=q.device).triu(self.stored - n + 1)
                own = own.masked_fill(hidden, float("-inf"))
            scores.append(own)
        probs = (torch.cat(scores, dim=-1).float() * scale).softmax(dim=-1).to(q.dtype)
        out = ungrouped(grouped(probs[..., :self.prefix_length]) @ self.prefix_v)
        if self.stored:
            out = out + probs[..., self.prefix_length:] @ v
        return out


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention where the queries are the last q_len of the k_len positions."""
    q_len, k_len = q.shape[-2], k.shape[-2]
    if q_len == k_len:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if q_len == 1:  # one new position sees everything before it
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    offset = k_len - q_len
    mask = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(diagonal=offset)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


class _Attention(nn.Module):
    """Projections shared by self- and cross-attention: q/k/v/out linears with bias and rotary positions."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = RotaryEmbedding(self.head_dim)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = x.shape
        return self.resid_dropout(self.out_proj(x.transpose(1, 2).reshape(batch, length, self.d_model)))

    @property
    def dropout_p(self) -> float:
        return self.attn_dropout_p if self.training else 0.0


class SelfAttention(_Attention):
    """Causal multi-head self-attention with rotary positions and an optional KV cache."""

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        start = 0 if cache is None else cache.length
        q = self.rotary(self.split_heads(self.q_proj(x)), start)
        k = self.rotary(self.split_heads(self.k_proj(x)), start)
        v = self.split_heads(self.v_proj(x))
        if cache is None:
            return self.merge_heads(_causal_attention(q, k, v, self.dropout_p))
        cache.append(k, v)
        return self.merge_heads(cache.attend(q, causal=True))


class CrossAttention(_Attention):
    """The dependency-aware cross-attention of the Kronos head: s1 embeddings query the trunk's hidden states.

    By default it reproduces the released model exactly: in training it is causal with rotary positions on q
    and k; in eval it is not causal, and rotary angles come from the query length, so a one-token query (the
    generation step) rotates neither q nor k and sees the whole window, which the released weights expect.
    ``causal=True`` forces the training form in eval too: a full-length query that is not causal would let
    position t see hidden states built from the tokens it is scored on (the original's validation loss does).
    """

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-rotated keys and values of the hidden states, cacheable for one-token queries."""
        return self.split_heads(self.k_proj(memory)), self.split_heads(self.v_proj(memory))

    def forward(self, query: torch.Tensor, memory: torch.Tensor, causal: bool | None = None) -> torch.Tensor:
        causal = self.training if causal is None else causal
        q_len, k_len = query.shape[1], memory.shape[1]
        q = self.split_heads(self.q_proj(query))
        k, v = self.project_memory(memory)
        if q_len == 1 and not causal:
            return self.merge_heads(F.scaled_dot_product_attention(q, k, v))
        if q_len != k_len:
            raise KronosInputError(
                f"the s1 condition must have one position or as many as the context ({k_len}), got {q_len}"
            )
        q, k = self.rotary(q), self.rotary(k)
        return self.merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_p, is_causal=causal))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + ffn(norm2(x))."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int, ffn_dropout_p: float = 0.0,
                 attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0):
        super().__init__()
        self.norm1 = RMSNorm(d_model)
        self.self_attn = SelfAttention(d_model, n_heads, attn_dropout_p, resid_dropout_p)
        self.norm2 = RMSNorm(d_model)
        self.ffn = FeedForward(d_model, ff_dim, ffn_dropout_p)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), cache)
        return x + self.ffn(self.norm2(x))
