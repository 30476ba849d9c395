"""Drawing one token from logits: temperature, then top-k, then nucleus (top-p), from counter-based draws.

Every sampled token's uniform is a hash of (the series' key, the sample path, the draw), computed on the
device with integer tensor ops: a series' paths depend on its key and the settings only, not on the batch it
shares, the batch size or the process that samples it, and drawing never syncs with the host.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from .spec import Sampling

_MASK32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x * c) mod 2**32 for 0 <= x < 2**32 in 16-bit halves of ``c``: no product reaches 2**63, so int64
    tensors and Python ints compute the same, with no signed overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _MASK32


def _hash32(x):
    """lowbias32 (C. Wellons): a well-mixing bijection on 32-bit values, for Python ints and int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def series_key(seed: int, *parts: str | bytes) -> int:
    """A stable 63-bit key from the seed and whatever identifies a series (unlike ``hash()``, not salted)."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (str(seed), *parts):
        data = part.encode() if isinstance(part, str) else bytes(part)
        digest.update(len(data).to_bytes(8, "little") + data)
    return int.from_bytes(digest.digest(), "little") >> 1


def path_streams(keys: torch.Tensor, sample_count: int) -> torch.Tensor:
    """A 64-bit stream id per (series, sample path), series-major, as two 32-bit lanes: (len(keys) *
    sample_count, 2) int64. 64 bits, so that two of the millions of paths of a backtest share a stream (and so
    every draw) with a negligible chance; 32 would give about a hundred such pairs in three years of CSI300."""
    lo = (keys & _MASK32).repeat_interleave(sample_count)
    hi = ((keys >> 32) & _MASK32).repeat_interleave(sample_count)
    path = torch.arange(sample_count, device=keys.device).repeat(len(keys))
    return torch.stack([_hash32(_hash32(_hash32(hi) ^ lo) ^ path),
                        _hash32(_hash32(_hash32(lo ^ 0x9E3779B9) ^ hi) ^ _hash32(path ^ 0x85EBCA6B))], dim=-1)


def uniforms(streams: torch.Tensor, draw: int) -> torch.Tensor:
    """The ``draw``-th uniform in (0, 1) of every stream, as float32 (24 random bits)."""
    h = _hash32(_hash32(streams[..., 0] ^ _hash32(draw)) ^ _hash32(streams[..., 1] ^ draw))
    return ((h >> 8).to(torch.float32) + 0.5) / 2 ** 24


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top k (ties kept) and then outside the nucleus of mass top_p.

    The nucleus keeps the smallest set of most likely tokens whose probability reaches top_p, including the
    token that crosses it, and never less than one token; tokens tied with the last one it keeps are kept too
    (as the top k keeps ties), so no sort order among equal logits decides a draw.
    """
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered = sorted_descending(logits)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        # a prefix of the sorted tokens: the first, and each whose predecessors' mass is at most top_p
        count = (cumulative[..., :-1] <= top_p).sum(dim=-1, keepdim=True) + 1
        logits = logits.masked_fill(logits < ordered.gather(-1, count - 1), float("-inf"))
    return logits


def sorted_descending(values: torch.Tensor) -> torch.Tensor:
    """Each row's values, largest first. The nucleus needs the values only, not their order, and the sorted values
    are the same whichever sort made them: numpy's vectorised sort takes a quarter of torch's time on the CPU."""
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(values.detach().numpy(), axis=-1)).flip(-1)
    return torch.sort(values, dim=-1, descending=True).values


def usable_rows(logits: torch.Tensor) -> torch.Tensor:
    """(rows,) True where a row of logits is a distribution: no NaN or +inf, and some finite logit. Any other
    row would still give a token (inverse CDF of NaNs picks the last one), so the caller refuses it."""
    return ~(torch.isnan(logits) | torch.isposinf(logits)).any(dim=-1) & torch.isfinite(logits).any(dim=-1)


def sample_token(logits: torch.Tensor, sampling: Sampling, streams: torch.Tensor, draw: int) -> torch.Tensor:
    """One token per row of (rows, vocab) logits, as (rows, 1) ids, by inverse CDF of the row's ``draw``-th
    uniform. Greedy settings (top_k == 1) take the argmax and draw nothing."""
    if sampling.greedy:
        return logits.argmax(dim=-1, keepdim=True)
    filtered = filter_logits(logits.float() / sampling.T, sampling.top_k, sampling.top_p)
    cdf = filtered.softmax(dim=-1).cumsum(dim=-1)
    target = uniforms(streams, draw).unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).clamp_(max=cdf.shape[-1] - 1)
