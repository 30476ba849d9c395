"""How good are the sampled paths? Calibration and accuracy of cached forecasts against what happened.

Kronos returns a distribution of future paths and signals are built from it, so its spread matters as much as
its centre. This module scores the paths of a :class:`~kronos_qlib.inference.forecast_cache.ForecastCache`
folder, step by step over the horizon, beside baselines built from history only:

- ``random_walk``: Gaussian daily log-returns with the stock's recent volatility (std of its last ``window``
  traded-day log-returns up to and including the forecast day t);
- ``bootstrap``: the same past returns resampled with replacement;
- ``zero_return``: the point forecast "the close stays at t's close".

Both random walks draw as many paths as the forecast, each (day, instrument) from its own seed, so the numbers
are reproducible and one forecast's baseline does not depend on what else is scored.

Few paths bias naive scores, so the scores are built to be fair to any path count m:

- Bands are order statistics: the central band of level q runs from the a-th to the b-th smallest of the m
  paths, a = max(1, floor((1 - q) / 2 * (m + 1) + 1/2)), b = m + 1 - a. With m exchangeable draws from the
  true distribution the realized value falls inside with probability (b - a) / (m + 1), reported beside each
  coverage as ``calibrated_50`` / ``calibrated_90`` (m = 5: 0.33 and 0.67; m = 20: 0.52 and 0.90).
- The PIT is the rank of the realized value among the paths (0..m, ties broken at random): uniform over the
  m + 1 ranks for a calibrated sampler.
- CRPS is the fair (unbiased) estimator mean|X_i - y| - sum_{i != j}|X_i - X_j| / (2 m (m - 1)); for a point
  forecast (m = 1, or all paths equal) it is the absolute error.

A (forecast, step) is scored only where the realized close exists: one that runs past the data's last day,
falls on a day the stock did not trade (suspended, delisted) or lacks ``min_history`` past returns for the
baselines is dropped and counted in :attr:`ForecastQuality.dropped`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ConfigError, KronosInputError
from .baselines import SAMPLED_BASELINES, past_log_returns, random_walk_paths
from .forecasts import ForecastSet, realized_closes

BAND_LEVELS = (0.5, 0.9)
#: the baseline a sampled model must beat on CRPS (``crps_skill_vs_rw`` > 0)
REFERENCE = "random_walk"


def band_order_statistics(sample_count: int, level: float) -> tuple[int, int]:
    """(a, b), 1-based: the central ``level`` band runs from the a-th to the b-th smallest path."""
    if sample_count < 2:
        raise KronosInputError(f"a band needs at least 2 paths, got {sample_count}")
    a = max(1, int(np.floor((1 - level) / 2 * (sample_count + 1) + 0.5)))
    return a, sample_count + 1 - a


def calibrated_coverage(sample_count: int, level: float) -> float:
    """Chance that a draw of the true distribution falls in the band of ``sample_count`` draws of it."""
    a, b = band_order_statistics(sample_count, level)
    return (b - a) / (sample_count + 1)


def band_coverage(samples: np.ndarray, y: np.ndarray, level: float) -> np.ndarray:
    """Whether each y lies in its samples' (..., m) central ``level`` band (order statistics, inclusive)."""
    a, b = band_order_statistics(samples.shape[-1], level)
    ordered = np.sort(samples, axis=-1)
    return (ordered[..., a - 1] <= y) & (y <= ordered[..., b - 1])


def fair_crps(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The fair (unbiased) sample CRPS of each y against its samples (..., m); the absolute error for m = 1."""
    m = samples.shape[-1]
    error = np.abs(samples - y[..., None]).mean(axis=-1)
    if m == 1:
        return error
    ordered = np.sort(samples, axis=-1)
    # sum_{i != j} |X_i - X_j| = 2 sum_i (2i - m - 1) X_(i) over the sorted draws
    weights = 2 * np.arange(1, m + 1) - m - 1
    return error - (ordered * weights).sum(axis=-1) / (m * (m - 1))


def pit_ranks(samples: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of each y among its samples (..., m), 0..m, ties broken uniformly at random."""
    below = (samples < y[..., None]).sum(axis=-1)
    ties = (samples == y[..., None]).sum(axis=-1)
    return below + np.floor(rng.random(y.shape) * (ties + 1)).astype(int)


def _metrics(samples: np.ndarray, y: np.ndarray, last_close: np.ndarray) -> dict[str, float]:
    """The scores of forecasts (k, m) of closes y (k,) made at closes ``last_close`` (k,)."""
    m = samples.shape[-1]
    returns, realized = samples / last_close[:, None] - 1, y / last_close - 1
    median = np.median(returns, axis=1)
    directed = (median != 0) & (realized != 0)
    row = {"n": len(y)}
    for level in BAND_LEVELS:
        pct = round(100 * level)
        row[f"coverage_{pct}"] = float(band_coverage(samples, y, level).mean()) if m > 1 else np.nan
        row[f"calibrated_{pct}"] = calibrated_coverage(m, level) if m > 1 else np.nan
    row.update({
        "crps_close": float(fair_crps(samples, y).mean()),
        "crps_return": float(fair_crps(returns, realized).mean()),
        "median_return_mae": float(np.abs(median - realized).mean()),
        "hit_rate": float((np.sign(median) == np.sign(realized))[directed].mean()) if directed.any() else np.nan,
    })
    return row


@dataclass
class ForecastQuality:
    """The scores of one forecast set and its baselines."""

    model: str  # the name of the scored forecasts in the tables
    table: pd.DataFrame  # index (model, step), step "all" pooled; one column per metric
    pit: pd.DataFrame  # index (model, step); columns the ranks 0..m; values the share of forecasts
    dropped: pd.DataFrame  # index step; forecasts, beyond_data, not_traded, short_history, scored
    sample_count: int

    def summary(self) -> pd.DataFrame:
        """The pooled row of every model."""
        return self.table.xs("all", level="step")


def evaluate(forecasts: ForecastSet, closes: pd.DataFrame, model: str = "kronos", window: int = 60,
             min_history: int = 20, seed: int = 0) -> ForecastQuality:
    """Score ``forecasts`` and the baselines against ``closes`` (trading calendar x instrument, NaN where not
    traded, covering ``window`` traded days before the first forecast and ``pred_len`` after the last)."""
    if not 2 <= min_history <= window:
        raise ConfigError(f"min_history must lie in [2, window={window}], got {min_history}")
    realized, beyond = realized_closes(closes, forecasts)
    history = past_log_returns(closes, forecasts.dates, forecasts.instruments, window)
    short = np.isfinite(history).sum(axis=1) < min_history
    scored = np.isfinite(realized) & ~short[:, None]
    if not scored.any():
        raise KronosInputError(
            f"none of the {len(realized)} forecasts can be scored: their steps run past the data's last day "
            f"({closes.index[-1].date()}), fall on days the stocks did not trade, or lack {min_history} past returns")
    m, horizon = forecasts.sample_count, forecasts.pred_len
    models = {model: forecasts.closes}
    for method in SAMPLED_BASELINES:
        models[method] = random_walk_paths(history, forecasts.last_close, forecasts.dates, forecasts.instruments,
                                           m, horizon, method, seed)
    models["zero_return"] = forecasts.last_close[:, None, None] * np.ones((1, 1, horizon))
    rng = np.random.default_rng(seed)
    rows, pit = {}, {}
    for name, paths in models.items():
        samples = np.moveaxis(paths, 2, 1)  # (n, pred_len, m)
        for step in range(horizon):
            keep = scored[:, step]
            if not keep.any():  # counted in ``dropped``
                continue
            rows[name, step + 1] = _metrics(samples[keep, step], realized[keep, step], forecasts.last_close[keep])
            if samples.shape[-1] > 1:
                ranks = pit_ranks(samples[keep, step], realized[keep, step], rng)
                pit[name, step + 1] = np.bincount(ranks, minlength=samples.shape[-1] + 1) / len(ranks)
        rows[name, "all"] = _metrics(samples[scored], realized[scored],
                                     np.broadcast_to(forecasts.last_close[:, None], scored.shape)[scored])
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.names = ["model", "step"]
    reference = table.xs(REFERENCE, level="model")["crps_return"]
    steps = table.index.get_level_values("step")
    table["crps_skill_vs_rw"] = 1 - table["crps_return"] / reference.reindex(steps).to_numpy()
    traded = ~beyond & np.isfinite(realized)
    dropped = pd.DataFrame({"forecasts": len(realized), "beyond_data": beyond.sum(axis=0),
                            "not_traded": (~beyond & ~traded).sum(axis=0),
                            "short_history": (traded & short[:, None]).sum(axis=0), "scored": scored.sum(axis=0)},
                           index=pd.RangeIndex(1, horizon + 1, name="step"))
    pit_frame = pd.DataFrame.from_dict(pit, orient="index")
    pit_frame.index = pd.MultiIndex.from_tuples(pit_frame.index, names=["model", "step"])
    return ForecastQuality(model, table, pit_frame, dropped, m)


