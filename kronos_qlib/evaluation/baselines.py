"""Baselines built from history only, as many paths as the forecast: a Gaussian random walk with the stock's
recent volatility and a bootstrap of its past returns (each (day, instrument) from its own seed)."""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from ..errors import ConfigError

SAMPLED_BASELINES = ("random_walk", "bootstrap")


def past_log_returns(closes: pd.DataFrame, dates: pd.DatetimeIndex, instruments: np.ndarray,
                     window: int) -> np.ndarray:
    """(n, window) the last ``window`` log-returns between consecutive traded closes up to and including each
    forecast day (oldest first, NaN-padded at the front where the history is shorter). Reads nothing after t."""
    out = np.full((len(dates), window), np.nan)
    for inst, rows in pd.Series(np.arange(len(dates))).groupby(instruments).indices.items():
        traded = closes[inst].dropna() if inst in closes.columns else pd.Series(dtype=float)
        logret = np.diff(np.log(traded.to_numpy()))  # logret[i] ends at traded day i + 1
        if len(logret) == 0:
            continue
        last = traded.index.searchsorted(dates[rows], side="right") - 1  # last traded day <= t
        idx = last[:, None] - window + np.arange(window)[None, :]
        out[rows] = np.where(idx >= 0, logret[np.clip(idx, 0, None)], np.nan)
    return out


def random_walk_paths(history: np.ndarray, last_close: np.ndarray, dates: pd.DatetimeIndex,
                      instruments: np.ndarray, sample_count: int, pred_len: int, method: str = "random_walk",
                      seed: int = 0) -> np.ndarray:
    """(n, sample_count, pred_len) closes of random walks from ``last_close`` whose daily log-returns are
    Gaussian with the std of ``history`` (``random_walk``) or drawn from it (``bootstrap``).

    Each forecast draws from a generator seeded by (seed, day, instrument). Rows whose history has fewer than
    2 returns are NaN.
    """
    if method not in SAMPLED_BASELINES:
        raise ConfigError(f"unknown baseline '{method}' (known: {', '.join(SAMPLED_BASELINES)})")
    counts = np.isfinite(history).sum(axis=1)
    sigma = np.nanstd(np.where(counts[:, None] >= 2, history, 0.0), axis=1, ddof=1)
    steps = np.full((len(history), sample_count, pred_len), np.nan)
    days = dates.strftime("%Y%m%d").astype(int)
    for i in np.flatnonzero(counts >= 2):
        rng = np.random.default_rng([seed, days[i], zlib.crc32(str(instruments[i]).encode())])
        if method == "random_walk":
            steps[i] = sigma[i] * rng.standard_normal((sample_count, pred_len))
        else:
            picks = history.shape[1] - counts[i] + rng.integers(0, counts[i], (sample_count, pred_len))
            steps[i] = history[i, picks]
    return last_close[:, None, None] * np.exp(np.cumsum(steps, axis=2))


