"""Cheap argument checks run at the public entry points of the networks."""
from __future__ import annotations

import torch

from ..errors import KronosInputError


def check_features(x: torch.Tensor, d_in: int, name: str = "x") -> None:
    """Bars must be (batch, length, d_in) and finite: a NaN would silently poison every token after it."""
    if x.ndim != 3 or x.shape[-1] != d_in:
        raise KronosInputError(f"{name} must have shape (batch, length, {d_in}), got {tuple(x.shape)}")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        batch, pos, feature = (int(i) for i in (~finite).nonzero()[0])
        raise KronosInputError(
            f"{name} holds a non-finite value (NaN or inf) at batch {batch}, position {pos}, feature {feature}"
        )


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str) -> None:
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise KronosInputError(f"{name} must be an integer tensor of token ids, got dtype {ids.dtype}")
    if ids.numel() and bool(((ids < 0) | (ids >= vocab_size)).any()):  # one host sync; min/max only on error
        raise KronosInputError(
            f"{name} holds token ids outside the vocabulary [0, {vocab_size}): min {int(ids.min())}, "
            f"max {int(ids.max())}"
        )


def check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise KronosInputError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and "
                               f"{tuple(b.shape)}")
