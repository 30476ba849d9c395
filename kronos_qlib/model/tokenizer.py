"""KronosTokenizer: a causal Transformer VQ-VAE that turns normalized K-line bars into (s1, s2) tokens."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import KronosInputError
from .checks import check_features, check_same_shape, check_token_ids
from .hub import HubModelMixin
from .layers import KVCache, TransformerBlock
from .quantizer import BSQuantizer

Indices = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class KronosTokenizer(nn.Module, HubModelMixin):
    """Encoder -> BSQ -> decoder over bars of ``d_in`` features (open, high, low, close, volume, amount).

    Constructor arguments are exactly the keys of the released ``config.json``. Encoder and decoder have
    ``n_enc_layers - 1`` and ``n_dec_layers - 1`` causal blocks, as in the original. The decoder also has a
    second entry, ``post_quant_embed_pre``, that reconstructs from the coarse s1 bits alone: training it makes
    s1 carry the bulk of the information, which is what the predictor's coarse-to-fine head relies on.
    """

    def __init__(self, d_in: int, d_model: int, n_heads: int, ff_dim: int, n_enc_layers: int, n_dec_layers: int,
                 ffn_dropout_p: float, attn_dropout_p: float, resid_dropout_p: float, s1_bits: int, s2_bits: int,
                 beta: float, gamma0: float, gamma: float, zeta: float, group_size: int):
        super().__init__()
        self.d_in, self.d_model = d_in, d_model
        self.s1_bits, self.s2_bits = s1_bits, s2_bits
        self.codebook_dim = s1_bits + s2_bits

        def blocks(n: int) -> nn.ModuleList:
            return nn.ModuleList(TransformerBlock(d_model, n_heads, ff_dim, ffn_dropout_p, attn_dropout_p,
                                                  resid_dropout_p) for _ in range(n))

        self.embed = nn.Linear(d_in, d_model)
        self.head = nn.Linear(d_model, d_in)
        self.encoder = blocks(n_enc_layers - 1)
        self.decoder = blocks(n_dec_layers - 1)
        self.quant_embed = nn.Linear(d_model, self.codebook_dim)
        self.post_quant_embed_pre = nn.Linear(s1_bits, d_model)
        self.post_quant_embed = nn.Linear(self.codebook_dim, d_model)
        self.tokenizer = BSQuantizer(s1_bits, s2_bits, beta, gamma0, gamma, zeta, group_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.d_in)
        z = self.embed(x.to(self.dtype))
        for block in self.encoder:
            z = block(z)
        return self.quant_embed(z)

    def _decode(self, z: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        for i, block in enumerate(self.decoder):
            z = block(z, None if caches is None else caches[i])
        return self.head(z)

    def forward(self, x: torch.Tensor):
        """Training pass.

        Returns ((reconstruction from the s1 half, full reconstruction), quantizer loss, quantized codes,
        full indices).
        """
        loss, codes, indices = self.tokenizer(self._latents(x))
        recon_s1 = self._decode(self.post_quant_embed_pre(codes[..., :self.s1_bits]))
        recon = self._decode(self.post_quant_embed(codes))
        return (recon_s1, recon), loss, codes, indices

    def encode(self, x: torch.Tensor, half: bool = False) -> Indices:
        """Token indices of normalized bars (batch, length, d_in); ``half=True`` gives the pair (s1, s2)."""
        return self.tokenizer(self._latents(x), half=half, with_loss=False)[2]

    def new_decoder_caches(self, capacity: int) -> list[KVCache]:
        """One KV cache per decoder block, for decoding a shared context once and new bars after it."""
        return [KVCache(capacity) for _ in self.decoder]

    def indices_to_codes(self, indices: Indices, half: bool = False) -> torch.Tensor:
        """+-1/sqrt(D) codes of token indices, in the module's dtype."""
        quantizer = self.tokenizer
        if half:
            if not isinstance(indices, (tuple, list)) or len(indices) != 2:
                raise KronosInputError("half=True expects the pair (s1_indices, s2_indices)")
            s1, s2 = indices
            check_same_shape(s1, s2, "s1 indices", "s2 indices")
            check_token_ids(s1, 2 ** self.s1_bits, "s1 indices")
            check_token_ids(s2, 2 ** self.s2_bits, "s2 indices")
            bits = torch.cat([quantizer.indices_to_bits(s1, self.s1_bits),
                              quantizer.indices_to_bits(s2, self.s2_bits)], dim=-1)
        else:
            if isinstance(indices, (tuple, list)):
                raise KronosInputError("a pair of (s1, s2) indices needs half=True")
            check_token_ids(indices, 2 ** self.codebook_dim, "indices")
            bits = quantizer.indices_to_bits(indices, self.codebook_dim)
        return (bits.to(self.dtype) * 2 - 1) * quantizer.bsq.scale

    def decode(self, indices: Indices, half: bool = False, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Bars (batch, length, d_in) from token indices.

        With ``caches`` (from :meth:`new_decoder_caches`) the new positions continue after those already
        cached: the decoder is causal, so a context shared by many sample paths is decoded once.
        """
        return self._decode(self.post_quant_embed(self.indices_to_codes(indices, half)), caches)
