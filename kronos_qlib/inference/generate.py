"""Autoregressive sampling of K-line paths, with a KV cache and a shared context per series.

The original Kronos repeats every context ``sample_count`` times, encodes each copy, and recomputes the whole
window at every step. Here a series' context is encoded once and prefilled once; its keys and values are then
copied to every sample path, and each step feeds a single new token. The tokenizer's decoder is causal too, so
the context part of the final window is decoded once per series and only the new bars per sample.

While the window still starts at the first bar, cached and recomputed steps compute the same function. Once
the sequence outgrows ``max_context`` the window slides and every kept position would see a different past,
so those steps rebuild the window from scratch: results stay equal to full recomputation.

Inputs are checked once per call, before the loop: the networks' own checks would sync a GPU with the host
at every generated token. For the same reason, a next-token distribution that is not one (NaN or inf logits,
from damaged weights or an overflow) is flagged on the device as it is drawn and refused once, after the loop.
"""
from __future__ import annotations

from functools import partial

import torch
from tqdm.auto import tqdm

from ..errors import KronosInputError
from ..model import Kronos, KronosTokenizer
from ..model.predictor import check_stamp
from .sampling import path_streams, sample_token, usable_rows
from .spec import ForecastSpec, Sampling


def _take_last(logits: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits[:, -1], context[:, -1:]


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
    pred_len, max_context, sample_count = spec.pred_len, spec.max_context, sampling.sample_count
    if (n_context, tuple(x_stamp.shape), tuple(y_stamp.shape), tuple(keys.shape)) != \
            (spec.lookback, (batch, n_context, 5), (batch, pred_len, 5), (batch,)):
        raise KronosInputError(f"inputs do not match {spec}: bars {tuple(x.shape)}, time features "
                               f"{tuple(x_stamp.shape)} and {tuple(y_stamp.shape)}, keys {tuple(keys.shape)}")
    total = n_context + pred_len
    capacity = min(total, max_context)
    n_seq = batch * sample_count
    streams = path_streams(keys, sample_count)

    decode_s1 = partial(model.decode_s1, validate=False)

    stamps = torch.cat([x_stamp, y_stamp], dim=1)
    check_stamp(stamps)  # once: the loop's steps run unchecked
    stamps_rep = stamps.repeat_interleave(sample_count, dim=0)
    if use_cache:
        ctx_s1, ctx_s2 = tokenizer.encode(x, half=True)
    else:  # the original: one encoding per sample copy
        ctx_s1, ctx_s2 = tokenizer.encode(x.repeat_interleave(sample_count, dim=0), half=True)
    repeats = sample_count if use_cache else 1
    s1 = ctx_s1.new_empty(n_seq, total)
    s2 = ctx_s2.new_empty(n_seq, total)
    s1[:, :n_context] = ctx_s1.repeat_interleave(repeats, dim=0)
    s2[:, :n_context] = ctx_s2.repeat_interleave(repeats, dim=0)

    unusable = torch.zeros(n_seq, pred_len, dtype=torch.bool, device=x.device)
    cache, cache_start = None, -1
    for step in range(pred_len):
        current = n_context + step
        start = max(0, current - max_context)
        if not use_cache:  # decode_s2 without a cache needs the whole window as its memory
            logits, context = decode_s1(s1[:, start:current], s2[:, start:current], stamps_rep[:, start:current])
            logits = logits[:, -1]
        elif start != cache_start:  # first step, or a window that slid: (re)build the cache
            cache_start = start
            if step == 0:  # every sample shares the context: prefill once per series, share it
                cache = model.new_cache(current - start)
                logits, context = _take_last(*decode_s1(ctx_s1[:, start:], ctx_s2[:, start:],
                                                        stamps[:, start:current], cache))
                cache.share_prefix(sample_count, capacity - (current - start))
                logits = logits.repeat_interleave(sample_count, dim=0)
                context = context.repeat_interleave(sample_count, dim=0)
            else:
                cache = model.new_cache(capacity)
                logits, context = _take_last(*decode_s1(s1[:, start:current], s2[:, start:current],
                                                        stamps_rep[:, start:current], cache))
        new_s1 = sample_token(logits, sampling, streams, 2 * step)
        s2_logits = model.decode_s2(context, new_s1, cache, validate=False)[:, -1]
        new_s2 = sample_token(s2_logits, sampling, streams, 2 * step + 1)
        unusable[:, step] = ~(usable_rows(logits) & usable_rows(s2_logits))
        s1[:, current], s2[:, current] = new_s1[:, 0], new_s2[:, 0]
        if use_cache and step + 1 < pred_len and max(0, current + 1 - max_context) == cache_start:
            logits, context = _take_last(*decode_s1(new_s1, new_s2, stamps_rep[:, current:current + 1], cache))
        if progress is not None:
            progress.update(1)

    if bool(unusable.any()):
        row, step = (int(i) for i in unusable.nonzero()[0])
        raise KronosInputError(f"the predictor gave a non-finite next-token distribution (NaN or inf logits) for "
                               f"series {row // sample_count} of the batch, path {row % sample_count}, at step "
                               f"{step + 1}: its weights or the context hold non-finite values")
    window_start = total - capacity  # <= n_context because pred_len <= max_context
    if use_cache:
        caches = tokenizer.new_decoder_caches(n_context - window_start)
        if window_start < n_context:
            tokenizer.decode((ctx_s1[:, window_start:], ctx_s2[:, window_start:]), half=True, caches=caches)
        for c in caches:
            c.share_prefix(sample_count, pred_len)
        bars = tokenizer.decode((s1[:, n_context:], s2[:, n_context:]), half=True, caches=caches)
    else:
        bars = tokenizer.decode((s1[:, window_start:], s2[:, window_start:]), half=True)[:, -pred_len:]
    return bars.reshape(batch, sample_count, pred_len, -1)
