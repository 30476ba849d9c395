"""Turning sampled price paths into one score per series.

``paths`` is (n_series, sample_count, pred_len, 6) in the column order of :data:`kronos_qlib.features.BAR_COLUMNS`.
Step k is the k-th bar after the last observed one; step 0 is the last observed close itself.

Every signal scores a window of the path, from the close at step ``start`` to the close at step ``end``. A score
at day t is traded at t + 1's close (Qlib's TopkDropoutStrategy with deal price close), so the move from t to
t + 1 cannot be earned: the default window starts at step 1, the first tradable close, and ends at the last step.
Qlib's label (close t + 1 to close t + 2) is the window (1, 2). Returns are relative to the close at ``start``, so
scores compare across stocks whatever their price level.

Paths are read in log space, one daily move at a time, and each move is clipped to the daily price limit of the
stock's market (``limit``): a path that the sampler sent to zero and back (a +9,900% "return" from a floored step)
then counts as no more than a path of limit moves the market allows, so one wild path cannot rank a stock first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import KronosInputError
from ..features import CLOSE

#: Daily returns of the history used for a stock's own volatility (vol_scaled_return).
HISTORY_VOL_BARS = 20
#: Quantile of the path returns scored by downside_return.
DOWNSIDE_QUANTILE = 0.2
#: Forecast closes are floored at this fraction of the last observed close before taking logs: de-normalized
#: paths can reach zero or below (mean - 5 std of a volatile context).
CLOSE_FLOOR = 0.01
#: The daily move bound where no market limit is given: a path the sampler floored at step 1 that recovers would
#: otherwise score a return of about 20 (x2000) for its stock; a real close rarely moves half in a day.
MARKET_FREE_LIMIT = 0.5
#: The smallest daily volatility vol_scaled_return divides by: a stock locked at its limit for a month has none.
VOL_FLOOR = 0.005


@dataclass(frozen=True)
class PathWindow:
    """Each path's log price relative to the last observed close (0 at step 0, every daily move clipped to the
    price limit), the scored window [start, end], and how many paths the floor and the limit changed."""

    log_closes: np.ndarray  # (n_series, sample_count, pred_len + 1)
    start: int
    end: int
    history: np.ndarray | None  # (n_series, n_bars) observed closes up to the last one, or None
    floored: int = 0  # paths with a close below CLOSE_FLOOR x the last close at some step of the forecast
    clipped: int = 0  # paths with a daily move beyond the price limit at some step of the forecast

    @property
    def returns(self) -> np.ndarray:
        """(n_series, sample_count) return of each path from start to end."""
        return np.expm1(self.log_closes[..., self.end] - self.log_closes[..., self.start])

    @property
    def step_returns(self) -> np.ndarray:
        """(n_series, sample_count, end - start) return from start to each later step of the window."""
        return np.expm1(self.log_closes[..., self.start + 1:self.end + 1] - self.log_closes[..., self.start, None])

    @property
    def daily_log_returns(self) -> np.ndarray:
        """(n_series, sample_count, end - start) step-to-step log returns inside the window."""
        return np.diff(self.log_closes[..., self.start:self.end + 1], axis=-1)


def floored(prices: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """``prices`` (n, ...) no lower than CLOSE_FLOOR x the forecast's last close (n,): a de-normalized path can
    cross zero."""
    return np.maximum(prices, CLOSE_FLOOR * last_close.reshape(-1, *[1] * (prices.ndim - 1)))


def floored_log_returns(closes: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """Log returns (n, sample_count, pred_len) of the paths' closes from t's close (n,), each close floored first."""
    return np.log(floored(closes, last_close) / last_close[:, None, None])


def path_window(closes: np.ndarray, last_close: np.ndarray, start: int, end: int, history: np.ndarray | None = None,
                limit: np.ndarray | float | None = None) -> PathWindow:
    """The clipped log paths of the sampled ``closes`` (n_series, sample_count, pred_len). ``limit`` is each
    series' daily price limit as a fraction (0.1: +-10%; a scalar for all); NaN or None: no market limit, so
    :data:`MARKET_FREE_LIMIT` bounds the moves instead."""
    closes = np.asarray(closes, dtype=np.float64)
    bad = ~np.isfinite(closes).all(axis=(1, 2))
    if bad.any():
        raise KronosInputError(f"the sampled paths of series {np.flatnonzero(bad)[:5].tolist()} hold non-finite "
                               f"closes")
    below_floor = closes < CLOSE_FLOOR * last_close[:, None, None]
    log_moves = np.diff(floored_log_returns(closes, last_close), axis=2, prepend=0.0)
    limit = np.broadcast_to(np.asarray(MARKET_FREE_LIMIT if limit is None else limit, dtype=np.float64),
                            last_close.shape)[:, None, None]
    limit = np.where(np.isfinite(limit), limit, MARKET_FREE_LIMIT)
    low, high = np.log1p(-np.minimum(limit, 0.99)), np.log1p(limit)
    outside = (log_moves < low) | (log_moves > high)
    log_moves = np.where(outside, np.clip(log_moves, low, high), log_moves)
    clipped = outside.any(axis=2)
    log_closes = np.concatenate([np.zeros((*closes.shape[:2], 1)), np.cumsum(log_moves, axis=2)], axis=2)
    return PathWindow(log_closes, start, end, history, int(below_floor.any(axis=2).sum()), int(clipped.sum()))


def expected_return(w: PathWindow) -> np.ndarray:
    """Mean over paths of the window's return."""
    return w.returns.mean(axis=1)


def mean_path_return(w: PathWindow) -> np.ndarray:
    """Mean over paths and over the window's steps: rewards early gains, not only where the path ends."""
    return w.step_returns.mean(axis=(1, 2))


def median_return(w: PathWindow) -> np.ndarray:
    """Median over paths of the window's return: robust to a few extreme paths."""
    return np.median(w.returns, axis=1)


def prob_up(w: PathWindow) -> np.ndarray:
    """Share of paths that end the window above where they start it."""
    return (w.returns > 0).mean(axis=1)


def mean_over_std(w: PathWindow) -> np.ndarray:
    """Mean / std across paths of the window's return: expected return per unit of model uncertainty."""
    ret = w.returns
    std = ret.std(axis=1)
    return np.divide(ret.mean(axis=1), std, out=np.zeros(len(ret)), where=std > 1e-8)


def vol_scaled_return(w: PathWindow) -> np.ndarray:
    """Expected return in units of the stock's own recent volatility over the window's length (a z-score, as the
    original Kronos backtest ranks): a 2% forecast means more for a quiet stock than for a wild one."""
    history = np.log(w.history[:, -(HISTORY_VOL_BARS + 1):])
    daily = np.maximum(np.diff(history, axis=1).std(axis=1), VOL_FLOOR)
    return expected_return(w) / (daily * np.sqrt(w.end - w.start))


def downside_return(w: PathWindow) -> np.ndarray:
    """A low quantile of the paths' returns: ranks by how bad the bad case is, not by the average."""
    return np.quantile(w.returns, DOWNSIDE_QUANTILE, axis=1)


def low_forecast_risk(w: PathWindow) -> np.ndarray:
    """Minus the volatility of the sampled paths (mean over paths of the std of their daily log returns inside
    the window): low forecast risk ranks high, the low-volatility anomaly as Kronos sees it."""
    return -w.daily_log_returns.std(axis=2).mean(axis=1)


@dataclass(frozen=True)
class Signal:
    function: Callable[[PathWindow], np.ndarray]
    min_paths: int = 1  # paths needed for a spread across them
    min_steps: int = 1  # steps the window must span
    needs_history: bool = False


SIGNALS: dict[str, Signal] = {
    "expected_return": Signal(expected_return),
    "mean_path_return": Signal(mean_path_return),
    "median_return": Signal(median_return),
    "prob_up": Signal(prob_up),
    "mean_over_std": Signal(mean_over_std, min_paths=2),
    "vol_scaled_return": Signal(vol_scaled_return, needs_history=True),
    "downside_return": Signal(downside_return),
    "low_forecast_risk": Signal(low_forecast_risk, min_steps=2),
}


def check_signal(name: str, pred_len: int, sample_count: int, start: int = 1, end: int | None = None) -> int:
    """Validate a signal and its window against a forecast's shape; returns the resolved end step."""
    if name not in SIGNALS:
        raise KronosInputError(f"unknown signal '{name}' (known signals: {', '.join(SIGNALS)})")
    signal = SIGNALS[name]
    end = pred_len if end is None else end
    for label, value in (("signal_start", start), ("signal_end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise KronosInputError(f"{label} must be an integer step, got {value!r}")
    if not 0 <= start < end <= pred_len:
        raise KronosInputError(f"the signal window (start step {start}, end step {end}) lies outside the forecast: "
                               f"it needs 0 <= start < end <= pred_len = {pred_len}")
    if end - start < signal.min_steps:
        raise KronosInputError(f"the signal '{name}' needs a window of at least {signal.min_steps} steps, got "
                               f"{start}..{end}")
    if sample_count < signal.min_paths:
        raise KronosInputError(f"the signal '{name}' needs sample_count >= {signal.min_paths} (a spread across "
                               f"paths), got {sample_count}")
    return int(end)


def compute_signal(name: str, paths: np.ndarray, last_close: np.ndarray, start: int = 1, end: int | None = None,
                   history: np.ndarray | None = None, limit: np.ndarray | float | None = None) -> np.ndarray:
    """The signal ``name`` (see :data:`SIGNALS`) of each series over the window [start, end] (default: step 1 to
    the last step). ``history`` (n_series, n_bars) holds the observed closes up to the last one, for the signals
    that need them; ``limit`` the daily price limit of each series (see :func:`path_window`)."""
    return score_window(name, prepared_window(name, paths, last_close, start, end, history, limit))


def prepared_window(name: str, paths: np.ndarray, last_close: np.ndarray, start: int = 1, end: int | None = None,
                    history: np.ndarray | None = None, limit: np.ndarray | float | None = None) -> PathWindow:
    """The checked :class:`PathWindow` that :func:`score_window` scores with ``name``."""
    end = check_signal(name, paths.shape[2], paths.shape[1], start, end)
    last_close = np.asarray(last_close, dtype=np.float64)
    if (last_close <= 0).any() or not np.isfinite(last_close).all():
        raise KronosInputError("last observed closes must be positive and finite to compute returns")
    if SIGNALS[name].needs_history:
        if history is None or np.ndim(history) != 2 or len(history) != len(paths) or np.shape(history)[1] < 3:
            raise KronosInputError(f"the signal '{name}' needs the observed closes of each series (history: "
                                   f"(n_series, >= 3 bars)), got {None if history is None else np.shape(history)}")
        history = np.asarray(history, dtype=np.float64)
        if (history <= 0).any() or not np.isfinite(history).all():
            raise KronosInputError(f"the signal '{name}' needs positive, finite observed closes")
    return path_window(paths[..., CLOSE], last_close, start, end, history, limit)


def score_window(name: str, window: PathWindow) -> np.ndarray:
    """The signal ``name`` of a prepared window; never non-finite (a spread of zero scores 0, not inf)."""
    values = SIGNALS[name].function(window)
    bad = ~np.isfinite(values)
    if bad.any():
        raise KronosInputError(f"the signal '{name}' is not finite for series {np.flatnonzero(bad)[:5].tolist()}")
    return values


def score_day(name: str, paths: np.ndarray, last_close: np.ndarray, start: int = 1, end: int | None = None,
              history: np.ndarray | None = None, limit: np.ndarray | float | None = None
              ) -> tuple[np.ndarray, PathWindow]:
    """One day's cross-section of the signal, as KronosModel ships it: scored, then winsorized (and the window,
    whose counts say how many paths the floor and the limit changed)."""
    window = prepared_window(name, paths, last_close, start, end, history, limit)
    return winsorize(score_window(name, window)), window


def winsorize(values: np.ndarray, quantile: float = 0.01) -> np.ndarray:
    """One day's cross-section with its floor(quantile x n) lowest and highest values set to the next value
    inside, so that no outlier dominates a z-score or a mean; the order of the rest is kept."""
    k = int(np.floor(quantile * len(values)))
    if k == 0:
        return values
    ordered = np.sort(values)
    return np.clip(values, ordered[k], ordered[-1 - k])
