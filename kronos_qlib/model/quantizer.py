"""Binary Spherical Quantization (BSQ) as used by the Kronos tokenizer.

A latent vector is L2-normalized and each coordinate snapped to +-1/sqrt(D): every code is a corner of the
hypercube on the unit sphere, and its bits are the token. Kronos splits the D = s1_bits + s2_bits bits into a
coarse s1 token and a fine s2 token.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * torch.log(probs + 1e-8)).sum(dim=-1)


class BinarySphericalQuantizer(nn.Module):
    """Sign quantizer with a straight-through gradient and the BSQ commitment + entropy loss.

    The loss is beta * commitment + zeta * (gamma0 * H_sample - gamma * H_codebook), with the entropies
    computed analytically from p = sigmoid(-4 z / sqrt(D)) per bit: low per-sample entropy makes each code
    confident, high codebook entropy spreads codes over the whole codebook.
    """

    def __init__(self, embed_dim: int, beta: float, gamma0: float, gamma: float, zeta: float, group_size: int):
        super().__init__()
        if embed_dim % group_size:
            raise ConfigError(f"s1_bits + s2_bits ({embed_dim}) must be divisible by group_size ({group_size})")
        self.embed_dim = embed_dim
        self.beta, self.gamma0, self.gamma, self.zeta = beta, gamma0, gamma, zeta
        self.group_size = group_size
        # Kept only because the released checkpoints store them (MSB-first powers of two).
        self.register_buffer("basis", 2 ** torch.arange(embed_dim - 1, -1, -1))
        self.register_buffer("group_basis", 2 ** torch.arange(group_size - 1, -1, -1))

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.embed_dim)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """+-1/sqrt(D) codes (exact zero goes to -1) with gradients passed straight through to z."""
        hard = torch.where(z > 0, torch.ones_like(z), -torch.ones_like(z))
        return (z + (hard - z).detach()) * self.scale

    def loss(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        commitment = ((codes.detach() - z) ** 2).sum(dim=-1).mean()
        p = torch.sigmoid(-4 * z * self.scale)
        bit_probs = torch.stack([p, 1 - p], dim=-1)  # (..., D, 2)
        per_sample = _entropy(bit_probs).sum(dim=-1).mean()
        codebook = _entropy(bit_probs.reshape(-1, self.embed_dim, 2).mean(dim=0)).sum()
        return self.beta * commitment + self.zeta * (self.gamma0 * per_sample - self.gamma * codebook)


class BSQuantizer(nn.Module):
    """Normalizes latents, quantizes them and reads the bits as LSB-first token indices."""

    def __init__(self, s1_bits: int, s2_bits: int, beta: float, gamma0: float, gamma: float, zeta: float,
                 group_size: int):
        super().__init__()
        self.s1_bits, self.s2_bits = s1_bits, s2_bits
        self.codebook_dim = s1_bits + s2_bits
        self.bsq = BinarySphericalQuantizer(self.codebook_dim, beta, gamma0, gamma, zeta, group_size)

    @staticmethod
    def bits_to_indices(codes: torch.Tensor) -> torch.Tensor:
        weights = 2 ** torch.arange(codes.shape[-1], device=codes.device, dtype=torch.long)
        return ((codes >= 0).long() * weights).sum(dim=-1)

    @staticmethod
    def indices_to_bits(indices: torch.Tensor, n_bits: int) -> torch.Tensor:
        """Bits of ``indices`` (LSB first) in a new last dimension, as bool."""
        weights = 2 ** torch.arange(n_bits, device=indices.device, dtype=torch.long)
        return (indices.unsqueeze(-1) & weights) != 0

    def forward(self, z: torch.Tensor, half: bool = False, with_loss: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """Return (loss, codes, indices); indices are (s1, s2) when ``half``. ``with_loss=False`` skips the loss."""
        z = F.normalize(z, dim=-1)
        codes = self.bsq.quantize(z)
        loss = self.bsq.loss(z, codes) if with_loss else z.new_zeros(())
        if half:
            indices = (self.bits_to_indices(codes[..., :self.s1_bits]), self.bits_to_indices(codes[..., self.s1_bits:]))
        else:
            indices = self.bits_to_indices(codes)
        return loss, codes, indices
