"""Drawing one token from logits: temperature, then top-k, then nucleus (top-p)."""
from __future__ import annotations

import torch

from ..errors import KronosInputError


def check_sampling_args(temperature: float, top_k: int, top_p: float, sample_count: int) -> None:
    if not temperature > 0:
        raise KronosInputError(f"T (temperature) must be > 0, got {temperature}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise KronosInputError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not 0 < top_p <= 1:
        raise KronosInputError(f"top_p must lie in (0, 1], got {top_p}")
    if isinstance(sample_count, bool) or not isinstance(sample_count, int) or sample_count < 1:
        raise KronosInputError(f"sample_count must be an integer >= 1, got {sample_count!r}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top k (ties kept) and then outside the nucleus of mass top_p.

    The nucleus keeps the smallest set of most likely tokens whose probability reaches top_p, including the
    token that crosses it, and never less than one token.
    """
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative > top_p
        remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
        remove_sorted[..., 0] = False
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def sample_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of (batch, vocab) logits, as (batch, 1) ids. top_k == 1 is greedy and draws nothing."""
    if top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    filtered = filter_logits(logits.float() / temperature, top_k, top_p)
    return torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator)
