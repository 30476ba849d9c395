"""Autoregressive sampling of K-line paths, with a KV cache and a shared context per series.

The original Kronos repeats every context ``sample_count`` times, encodes each copy, and recomputes the whole
window at every step; :func:`_sample_recomputed` keeps that algorithm, for checking. :func:`_sample_cached`
encodes and prefills a series' context once, copies its keys and values to every sample path, and feeds a
single new token per step. The tokenizer's decoder is causal too, so the context part of the final window is
decoded once per series and only the new bars per sample. Both draw a step's token pair the same way
(:meth:`_Paths.draw`), so for a given key they draw the same paths.

While the window still starts at the first bar, cached and recomputed steps compute the same function. Once
the sequence outgrows ``max_context`` the window slides and every kept position would see a different past,
so those steps rebuild the window from scratch: results stay equal to full recomputation.

Inputs are checked once per call, before the loop: the networks' own checks would sync a GPU with the host
at every generated token. For the same reason, a next-token distribution that is not one (NaN or inf logits,
from damaged weights or an overflow) is flagged on the device as it is drawn and refused once, after the loop.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from tqdm.auto import tqdm

from ..errors import KronosInputError
from ..model import Kronos, KronosTokenizer
from ..model.predictor import PredictorCache, check_stamp
from .sampling import path_streams, sample_token, usable_rows
from .spec import ForecastSpec, Sampling


@torch.inference_mode()
def sample_paths(tokenizer: KronosTokenizer, model: Kronos, x: torch.Tensor, x_stamp: torch.Tensor,
                 y_stamp: torch.Tensor, keys: torch.Tensor, spec: ForecastSpec, sampling: Sampling, *,
                 use_cache: bool = True, progress: tqdm | None = None) -> torch.Tensor:
    """Sample ``sampling.sample_count`` continuations of each normalized context.

    Args:
        x: (batch, spec.lookback, d_in) normalized, clipped bars.
        x_stamp, y_stamp: (batch, spec.lookback, 5) and (batch, spec.pred_len, 5) time features.
        keys: (batch,) int64 keys (:func:`~kronos_qlib.inference.sampling.series_key`): a series' draws depend
            on its key only, not on the rest of the batch.
        use_cache: False recomputes the whole window at every step, as the original does (for checking).
        progress: anything with ``update(n)`` (e.g. a tqdm bar), advanced once per step.

    Returns:
        (batch, sample_count, pred_len, d_in) normalized bars.
    """
    batch, n_context, _ = x.shape
    if (n_context, tuple(x_stamp.shape), tuple(y_stamp.shape), tuple(keys.shape)) != \
            (spec.lookback, (batch, n_context, 5), (batch, spec.pred_len, 5), (batch,)):
        raise KronosInputError(f"inputs do not match {spec}: bars {tuple(x.shape)}, time features "
                               f"{tuple(x_stamp.shape)} and {tuple(y_stamp.shape)}, keys {tuple(keys.shape)}")
    stamps = torch.cat([x_stamp, y_stamp], dim=1)
    check_stamp(stamps)  # once: the loop's steps run unchecked
    sample = _sample_cached if use_cache else _sample_recomputed
    bars = sample(tokenizer, model, x, stamps, keys, spec, sampling, progress)
    return bars.reshape(batch, sampling.sample_count, spec.pred_len, -1)


class _Paths:
    """The token pairs of every sample path (series-major), drawn step by step, and the steps whose logits were
    no distribution: flagged on the device as they are drawn, refused once after the loop."""

    def __init__(self, model: Kronos, sampling: Sampling, keys: torch.Tensor, ctx_s1: torch.Tensor,
                 ctx_s2: torch.Tensor, pred_len: int):
        """Every path begins with its context tokens ``ctx_s1``, ``ctx_s2``: (n_paths, n_context) each."""
        self.model, self.sampling, self.copies = model, sampling, sampling.sample_count
        self.streams = path_streams(keys, self.copies)
        n_paths, self.n_context = ctx_s1.shape
        self.s1 = ctx_s1.new_empty(n_paths, self.n_context + pred_len)
        self.s2 = ctx_s2.new_empty(n_paths, self.n_context + pred_len)
        self.s1[:, :self.n_context], self.s2[:, :self.n_context] = ctx_s1, ctx_s2
        self.unusable = torch.zeros(n_paths, pred_len, dtype=torch.bool, device=ctx_s1.device)

    def draw(self, step: int, logits: torch.Tensor, context: torch.Tensor,
             cache: PredictorCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw step ``step``'s s1 token from its ``logits``, then its s2 token given it; keep and return both.

        ``context`` is the window's hidden states (with ``cache``, its last one: the rest is cached).
        """
        new_s1 = sample_token(logits, self.sampling, self.streams, 2 * step)
        s2_logits = self.model.decode_s2(context, new_s1, cache, validate=False)[:, -1]
        new_s2 = sample_token(s2_logits, self.sampling, self.streams, 2 * step + 1)
        self.unusable[:, step] = ~(usable_rows(logits) & usable_rows(s2_logits))
        self.s1[:, self.n_context + step], self.s2[:, self.n_context + step] = new_s1[:, 0], new_s2[:, 0]
        return new_s1, new_s2

    def window(self, start: int, end: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Every path's tokens [start, end)."""
        return self.s1[:, start:end], self.s2[:, start:end]

    def refuse_unusable(self) -> None:
        """Raise for the first path and step drawn from a non-distribution: one host sync, after the loop."""
        if bool(self.unusable.any()):
            row, step = (int(i) for i in self.unusable.nonzero()[0])
            raise KronosInputError(f"the predictor gave a non-finite next-token distribution (NaN or inf logits) "
                                   f"for series {row // self.copies} of the batch, path {row % self.copies}, at "
                                   f"step {step + 1}: its weights or the context hold non-finite values")


def _steps(n_context: int, spec: ForecastSpec) -> Iterator[tuple[int, int, int]]:
    """(step, start, end) of every step: it sees tokens [start, end), at most ``max_context`` of them."""
    for step in range(spec.pred_len):
        end = n_context + step
        yield step, max(0, end - spec.max_context), end


def _window_start(n_context: int, spec: ForecastSpec) -> int:
    """Where the final window starts: <= n_context because pred_len <= max_context."""
    return max(0, n_context + spec.pred_len - spec.max_context)


def _sample_recomputed(tokenizer: KronosTokenizer, model: Kronos, x: torch.Tensor, stamps: torch.Tensor,
                       keys: torch.Tensor, spec: ForecastSpec, sampling: Sampling,
                       progress: tqdm | None) -> torch.Tensor:
    """The original algorithm: each context encoded once per sample path, the whole window re-run each step."""
    n_context, copies = x.shape[1], sampling.sample_count
    stamps = stamps.repeat_interleave(copies, dim=0)
    paths = _Paths(model, sampling, keys, *tokenizer.encode(x.repeat_interleave(copies, dim=0), half=True),
                   spec.pred_len)
    for step, start, end in _steps(n_context, spec):
        logits, context = model.decode_s1(*paths.window(start, end), stamps[:, start:end], validate=False)
        paths.draw(step, logits[:, -1], context)  # no cache: decode_s2 takes the whole window as its memory
        if progress is not None:
            progress.update(1)
    paths.refuse_unusable()
    return tokenizer.decode(paths.window(_window_start(n_context, spec), None), half=True)[:, -spec.pred_len:]


def _sample_cached(tokenizer: KronosTokenizer, model: Kronos, x: torch.Tensor, stamps: torch.Tensor,
                   keys: torch.Tensor, spec: ForecastSpec, sampling: Sampling, progress: tqdm | None) -> torch.Tensor:
    """The KV-cache sampler: a context encoded and prefilled once per series, one new token fed per step; the
    cache is rebuilt from the window only when the window slides."""
    n_context, copies = x.shape[1], sampling.sample_count
    capacity = min(n_context + spec.pred_len, spec.max_context)
    stamps_rep = stamps.repeat_interleave(copies, dim=0)
    ctx = tokenizer.encode(x, half=True)
    paths = _Paths(model, sampling, keys, *(c.repeat_interleave(copies, dim=0) for c in ctx), spec.pred_len)
    cache_start = -1
    for step, start, end in _steps(n_context, spec):
        if start != cache_start:  # first step, or a window that slid: (re)build the cache
            cache_start = start
            if step == 0:  # every path shares the context: prefill once per series
                cache, logits, context = _prefill_shared(model, ctx, stamps[:, start:end], start, copies, capacity)
            else:
                cache = model.new_cache(capacity)
                logits, context = _last(*model.decode_s1(*paths.window(start, end), stamps_rep[:, start:end],
                                                         cache, validate=False, last=True))
        new_s1, new_s2 = paths.draw(step, logits, context, cache)
        if step + 1 < spec.pred_len and max(0, end + 1 - spec.max_context) == cache_start:
            logits, context = _last(*model.decode_s1(new_s1, new_s2, stamps_rep[:, end:end + 1], cache,
                                                     validate=False))
        if progress is not None:
            progress.update(1)
    paths.refuse_unusable()
    return _decode_new_bars(tokenizer, ctx, paths, spec)


def _last(logits: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last position's logits and hidden state: all a cached step needs."""
    return logits[:, -1], context[:, -1:]


def _prefill_shared(model: Kronos, ctx: tuple[torch.Tensor, torch.Tensor], stamps: torch.Tensor, start: int,
                    copies: int, capacity: int) -> tuple[PredictorCache, torch.Tensor, torch.Tensor]:
    """Prefill a cache with each series' context from ``start`` once and share it with its ``copies`` paths."""
    length = ctx[0].shape[1] - start
    cache = model.new_cache(length)
    logits, context = _last(*model.decode_s1(ctx[0][:, start:], ctx[1][:, start:], stamps, cache, validate=False,
                                             last=True))
    cache.share_prefix(copies, capacity - length)
    return cache, logits.repeat_interleave(copies, dim=0), context.repeat_interleave(copies, dim=0)


def _decode_new_bars(tokenizer: KronosTokenizer, ctx: tuple[torch.Tensor, torch.Tensor], paths: _Paths,
                     spec: ForecastSpec) -> torch.Tensor:
    """The new bars of every path: the decoder's cache holds the window's context part, decoded once per series."""
    n_context = ctx[0].shape[1]
    window_start = _window_start(n_context, spec)
    caches = tokenizer.new_decoder_caches(n_context - window_start)
    if window_start < n_context:
        tokenizer.decode((ctx[0][:, window_start:], ctx[1][:, window_start:]), half=True, caches=caches)
    for c in caches:
        c.share_prefix(paths.copies, spec.pred_len)
    return tokenizer.decode(paths.window(n_context, None), half=True, caches=caches)
