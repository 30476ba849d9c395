"""Training windows over a panel of daily bars: which windows exist, and what a window looks like to a model.

Suspended days (NaN bars) are dropped: a window is ``lookback + pred_len`` consecutive *traded* bars of one
instrument, and its time features carry the real dates, so a window across a suspension joins the prices on
either side of the gap as a holder of the stock would see them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..features import BAR_COLUMNS, normalize, time_features
from ..inference.spec import ForecastSpec
from .qlib_source import Spans


@dataclass
class BarPanel:
    """Every instrument's traded bars, concatenated; instrument i owns rows offsets[i]:offsets[i + 1]."""

    instruments: np.ndarray  # (n_instruments,) str
    offsets: np.ndarray  # (n_instruments + 1,) int64
    dates: np.ndarray  # (n_rows,) datetime64[ns]
    values: np.ndarray  # (n_rows, 6) float64, columns BAR_COLUMNS
    stamps: np.ndarray  # (n_rows, 5) float32 time features

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> BarPanel:
        """From a (instrument, datetime)-indexed frame of BAR_COLUMNS, dropping suspended (NaN) bars."""
        traded = frame[list(BAR_COLUMNS)].dropna().sort_index()
        codes, instruments = pd.factorize(traded.index.get_level_values(0), sort=True)
        counts = np.bincount(codes, minlength=len(instruments))
        dates = pd.DatetimeIndex(traded.index.get_level_values(1))
        return cls(instruments=np.asarray(instruments, dtype=str),
                   offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                   dates=dates.values.astype("datetime64[ns]"),
                   values=traded.to_numpy(dtype=np.float64),
                   stamps=time_features(dates))


def window_starts(panel: BarPanel, spec: ForecastSpec, start: str | pd.Timestamp, end: str | pd.Timestamp,
                  spans: Spans | None = None) -> np.ndarray:
    """Row indices where the windows of a split begin.

    A window belongs to the split [start, end] when all its ``pred_len`` target bars lie inside it; its
    context may reach back before ``start``. With ``spans`` (point-in-time index membership) its stock must be a
    member on the day of its last context bar, t, exactly as inference scores the members of day t: membership
    known at t decides, so no stock enters the training universe because of what happened during the horizon
    (joining an index tends to follow a rally), and none leaves it because of that either (leaving tends to
    follow a fall: dropping those windows would bias the learned drift upward). History from before the stock
    joined may serve as context.
    """
    start64, end64 = np.datetime64(pd.Timestamp(start), "ns"), np.datetime64(pd.Timestamp(end), "ns")
    found = []
    for i, instrument in enumerate(panel.instruments):
        first, stop = int(panel.offsets[i]), int(panel.offsets[i + 1])
        candidates = np.arange(first, stop - spec.length + 1)
        if candidates.size == 0:
            continue
        last_context = panel.dates[candidates + spec.lookback - 1]
        target_start = panel.dates[candidates + spec.lookback]
        window_end = panel.dates[candidates + spec.length - 1]
        keep = (target_start >= start64) & (window_end <= end64)
        if spans is not None:
            member = np.zeros_like(keep)
            for a, b in spans.get(str(instrument), []):
                member |= (last_context >= np.datetime64(a, "ns")) & (last_context <= np.datetime64(b, "ns"))
            keep &= member
        found.append(candidates[keep])
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


class WindowDataset(Dataset):
    """Windows as (normalized bars (length, 6) float32, time features (length, 5) float32).

    Normalization uses the mean and std of the lookback bars only and is applied to the whole window, clipped.
    """

    def __init__(self, panel: BarPanel, starts: np.ndarray, spec: ForecastSpec):
        self.panel, self.starts, self.spec = panel, np.asarray(starts, dtype=np.int64), spec

    def __len__(self) -> int:
        return len(self.starts)

    def rows(self, index: int) -> slice:
        start = int(self.starts[index])
        return slice(start, start + self.spec.length)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows(index)
        x, _, _ = normalize(self.panel.values[rows], self.spec.clip, n_stats=self.spec.lookback)
        return torch.from_numpy(x), torch.from_numpy(self.panel.stamps[rows])

    def fingerprint(self) -> str:
        """SHA-1 of the window settings, which windows there are and every bar they draw from: only those, so a
        panel that reaches further (a later test end) leaves a finished training stage's data unchanged."""
        spec = self.spec
        digest = hashlib.sha1(f"ForecastSpec(lookback={spec.lookback}, pred_len={spec.pred_len}, clip={spec.clip!r})"
                              .encode())
        owners = np.searchsorted(self.panel.offsets, self.starts, side="right") - 1
        depth = np.zeros(len(self.panel.values) + 1, dtype=np.int64)  # windows covering each row, by differences
        np.add.at(depth, self.starts, 1)
        np.add.at(depth, self.starts + spec.length, -1)
        drawn = np.cumsum(depth[:-1]) > 0
        for array in (self.panel.instruments[owners].astype("U"), self.panel.dates[self.starts],
                      self.panel.values[drawn]):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def describe(self, index: int) -> tuple[str, pd.Timestamp, pd.Timestamp]:
        """(instrument, first date, last date) of a window."""
        rows = self.rows(index)
        owner = int(np.searchsorted(self.panel.offsets, rows.start, side="right")) - 1
        return (str(self.panel.instruments[owner]), pd.Timestamp(self.panel.dates[rows.start]),
                pd.Timestamp(self.panel.dates[rows.stop - 1]))
