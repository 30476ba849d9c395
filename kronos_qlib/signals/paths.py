"""Turning sampled price paths into one score per series.

Every signal is built from returns relative to the last observed close, so scores compare across stocks
whatever their price level. ``paths`` is (n_series, sample_count, pred_len, 6) in the column order of
:data:`kronos_qlib.features.BAR_COLUMNS`; ``horizon`` is the step (1-based) whose close is scored.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import KronosInputError
from ..features import CLOSE


def _returns(paths: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """(n_series, sample_count, pred_len) close-to-last-close returns."""
    return paths[..., CLOSE] / last_close[:, None, None] - 1.0


def expected_return(paths: np.ndarray, last_close: np.ndarray, horizon: int) -> np.ndarray:
    """Mean over paths of the return to the close at the horizon."""
    return _returns(paths, last_close)[:, :, horizon - 1].mean(axis=1)


def mean_path_return(paths: np.ndarray, last_close: np.ndarray, horizon: int) -> np.ndarray:
    """Mean over paths and over steps 1..horizon: rewards early gains, not only where the path ends."""
    return _returns(paths, last_close)[:, :, :horizon].mean(axis=(1, 2))


def median_return(paths: np.ndarray, last_close: np.ndarray, horizon: int) -> np.ndarray:
    """Median over paths of the return at the horizon: robust to a few extreme paths."""
    return np.median(_returns(paths, last_close)[:, :, horizon - 1], axis=1)


def prob_up(paths: np.ndarray, last_close: np.ndarray, horizon: int) -> np.ndarray:
    """Share of paths whose close at the horizon is above the last close."""
    return (_returns(paths, last_close)[:, :, horizon - 1] > 0).mean(axis=1)


def mean_over_std(paths: np.ndarray, last_close: np.ndarray, horizon: int) -> np.ndarray:
    """Mean / std across paths of the return at the horizon: expected return per unit of model uncertainty."""
    if paths.shape[1] < 2:
        raise KronosInputError("the signal 'mean_over_std' needs sample_count >= 2 (a spread across paths)")
    ret = _returns(paths, last_close)[:, :, horizon - 1]
    return ret.mean(axis=1) / (ret.std(axis=1) + 1e-8)


SIGNALS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "expected_return": expected_return,
    "mean_path_return": mean_path_return,
    "median_return": median_return,
    "prob_up": prob_up,
    "mean_over_std": mean_over_std,
}


def compute_signal(name: str, paths: np.ndarray, last_close: np.ndarray, horizon: int | None = None) -> np.ndarray:
    """The signal ``name`` (see :data:`SIGNALS`) of each series; horizon defaults to the last step."""
    if name not in SIGNALS:
        raise KronosInputError(f"unknown signal '{name}' (known signals: {', '.join(SIGNALS)})")
    pred_len = paths.shape[2]
    horizon = pred_len if horizon is None else horizon
    if not 1 <= horizon <= pred_len:
        raise KronosInputError(f"signal horizon must lie in [1, {pred_len}] (the forecast length), got {horizon}")
    last_close = np.asarray(last_close, dtype=np.float64)
    if (last_close <= 0).any() or not np.isfinite(last_close).all():
        raise KronosInputError("last observed closes must be positive and finite to compute returns")
    return SIGNALS[name](paths, last_close, horizon)
