"""Stock-days for a cross-sectional head: a context up to day t and the forward return the book trades.

A sample is a member's ``lookback`` traded bars up to t and the return from the close of t + 1 to the close of
t + 1 + H (traded bars, as the training windows). It belongs to a split exactly when the window of
``lookback + 1 + H`` bars would (:func:`~kronos_qlib.data.windows.window_starts`): every bar of the return lies
inside the split and membership is that of day t, so no target reaches past its segment's end. The return is
rank-normalized per day: the cross-section is the sample, and a batch holds whole days.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import KronosInputError
from ..features import CLOSE
from ..inference.spec import ForecastSpec
from .qlib_source import Spans
from .windows import BarPanel, window_starts


@dataclass
class HeadSamples:
    """Stock-days sorted by day: context start rows, day t, instrument, forward return and its per-day rank score."""

    starts: np.ndarray  # (n,) panel row of each context's first bar
    days: np.ndarray  # (n,) datetime64[ns] day t, the last context bar
    instruments: np.ndarray  # (n,) str
    returns: np.ndarray  # (n,) close t+1 -> close t+1+H
    targets: np.ndarray  # (n,) float32, per-day ranks scaled to mean 0, std 1

    def __len__(self) -> int:
        return len(self.starts)

    def take(self, rows: np.ndarray) -> HeadSamples:
        """The samples at ``rows`` (in that order)."""
        return HeadSamples(self.starts[rows], self.days[rows], self.instruments[rows], self.returns[rows],
                           self.targets[rows])

    def every_kth_day(self, k: int) -> HeadSamples:
        """The samples of every k-th trading day, whole days kept (targets stay those of the full day)."""
        return self.take(np.flatnonzero(np.isin(self.days, np.unique(self.days)[::k])))

    def day_slices(self) -> list[slice]:
        """Each day's rows (samples are sorted by day)."""
        bounds = np.flatnonzero(np.r_[True, self.days[1:] != self.days[:-1], True])
        return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def rank_targets(values: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Per-day ranks (average for ties) centred and scaled to unit variance: (rank - (n+1)/2) / sqrt((n^2-1)/12)."""
    frame = pd.DataFrame({"day": days, "value": values})
    ranks = frame.groupby("day")["value"].rank(method="average").to_numpy()
    n = frame.groupby("day")["value"].transform("size").to_numpy().astype(np.float64)
    scale = np.sqrt(np.maximum((n ** 2 - 1) / 12.0, 1e-12))
    return ((ranks - (n + 1) / 2) / scale).astype(np.float32)


def head_samples(panel: BarPanel, lookback: int, horizon: int, start: str | pd.Timestamp,
                 end: str | pd.Timestamp, spans: Spans | None = None, min_members: int = 2) -> HeadSamples:
    """The split's stock-days (see module docstring); days with fewer than ``min_members`` are dropped (a
    cross-section of one has no ranking to learn)."""
    if horizon < 1:
        raise KronosInputError(f"the head's horizon H must be >= 1 trading day, got {horizon}")
    starts = window_starts(panel, ForecastSpec(lookback=lookback, pred_len=horizon + 1), start, end, spans)
    if starts.size == 0:
        raise KronosInputError(f"no stock-day in {pd.Timestamp(start).date()}..{pd.Timestamp(end).date()} has "
                               f"{lookback} bars of context and a {horizon}-day forward return inside the range")
    entry, exit_ = starts + lookback, starts + lookback + horizon
    returns = panel.values[exit_, CLOSE] / panel.values[entry, CLOSE] - 1.0
    days = panel.dates[starts + lookback - 1]
    owners = np.searchsorted(panel.offsets, starts, side="right") - 1
    order = np.lexsort((owners, days))
    starts, days, owners, returns = starts[order], days[order], owners[order], returns[order]
    counts = pd.Series(days).map(pd.Series(days).value_counts()).to_numpy()
    keep = counts >= min_members
    starts, days, owners, returns = starts[keep], days[keep], owners[keep], returns[keep]
    return HeadSamples(starts=starts, days=days, instruments=panel.instruments[owners], returns=returns,
                       targets=rank_targets(returns, days))


def day_batches(samples: HeadSamples, days_per_batch: int, seed: int | None) -> Iterator[np.ndarray]:
    """Row indices of batches that each hold ``days_per_batch`` whole days, days shuffled by ``seed`` (None: in
    order, for evaluation)."""
    slices = samples.day_slices()
    order = np.arange(len(slices)) if seed is None else np.random.default_rng(seed).permutation(len(slices))
    for i in range(0, len(order), days_per_batch):
        yield np.concatenate([np.arange(slices[j].start, slices[j].stop) for j in order[i:i + days_per_batch]])
