"""Turning sampled price paths into one score per series.

``paths`` is (n_series, sample_count, pred_len, 6) in the column order of :data:`kronos_qlib.features.BAR_COLUMNS`.
Step k is the k-th bar after the last observed one; step 0 is the last observed close itself.

Every signal scores a window of the path, from the close at step ``start`` to the close at step ``end``. A score
at day t is traded at t + 1's close (Qlib's TopkDropoutStrategy with deal price close), so the move from t to
t + 1 cannot be earned: the default window starts at step 1, the first tradable close, and ends at the last step.
Qlib's label (close t + 1 to close t + 2) is the window (1, 2). Returns are relative to the close at ``start``, so
scores compare across stocks whatever their price level.
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
#: Forecast closes are floored at this fraction of the last observed close. De-normalized paths can reach zero or
#: below (mean - 5 std of a volatile context); a 99% fall is the worst a path may say, so one wild path neither
#: stops a backtest nor swamps the cross-section.
CLOSE_FLOOR = 0.01
#: The smallest daily volatility vol_scaled_return divides by: a stock locked at its limit for a month has none.
VOL_FLOOR = 0.005


@dataclass(frozen=True)
class PathWindow:
    """The closes of every path from step 0 (last observed) and the scored window [start, end]."""

    closes: np.ndarray  # (n_series, sample_count, pred_len + 1)
    start: int
    end: int
    history: np.ndarray | None  # (n_series, n_bars) observed closes up to the last one, or None

    @property
    def returns(self) -> np.ndarray:
        """(n_series, sample_count) return of each path from start to end."""
        return self.closes[..., self.end] / self.closes[..., self.start] - 1.0

    @property
    def step_returns(self) -> np.ndarray:
        """(n_series, sample_count, end - start) return from start to each later step of the window."""
        return self.closes[..., self.start + 1:self.end + 1] / self.closes[..., self.start, None] - 1.0

    @property
    def daily_log_returns(self) -> np.ndarray:
        """(n_series, sample_count, end - start) step-to-step log returns inside the window."""
        return np.diff(np.log(self.closes[..., self.start:self.end + 1]), axis=-1)


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
    return ret.mean(axis=1) / (ret.std(axis=1) + 1e-8)


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
                   history: np.ndarray | None = None) -> np.ndarray:
    """The signal ``name`` (see :data:`SIGNALS`) of each series over the window [start, end] (default: step 1 to
    the last step). ``history`` (n_series, n_bars) holds the observed closes up to the last one, for the signals
    that need them."""
    end = check_signal(name, paths.shape[2], paths.shape[1], start, end)
    last_close = np.asarray(last_close, dtype=np.float64)
    if (last_close <= 0).any() or not np.isfinite(last_close).all():
        raise KronosInputError("last observed closes must be positive and finite to compute returns")
    forecast = np.maximum(paths[..., CLOSE].astype(np.float64), CLOSE_FLOOR * last_close[:, None, None])
    closes = np.concatenate([np.broadcast_to(last_close[:, None, None], (*paths.shape[:2], 1)), forecast], axis=2)
    if SIGNALS[name].needs_history:
        if history is None or np.ndim(history) != 2 or len(history) != len(paths) or np.shape(history)[1] < 3:
            raise KronosInputError(f"the signal '{name}' needs the observed closes of each series (history: "
                                   f"(n_series, >= 3 bars)), got {None if history is None else np.shape(history)}")
        history = np.asarray(history, dtype=np.float64)
        if (history <= 0).any() or not np.isfinite(history).all():
            raise KronosInputError(f"the signal '{name}' needs positive, finite observed closes")
    return SIGNALS[name].function(PathWindow(closes, start, end, history))
