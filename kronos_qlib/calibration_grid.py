"""Choosing the sampling settings (temperature, top_p, number of paths) on the valid segment, never on test.

``benchmarks/bench_calibration.py`` samples the valid segment once per grid point and scores each with
:func:`kronos_qlib.forecast_quality.evaluate`; this module holds the parts that decide: which days are sampled
(:func:`scoring_days`: every k-th valid day whose whole horizon is realized inside valid, so no score reads a
test-period close) and which setting wins (:func:`best_setting`, the rule declared before any result is seen).

The rule: the (T, top_p) whose pooled fair CRPS of the return, averaged over the path counts tried, is lowest
(CRPS is a proper score: it rewards calibration and sharpness at once), with the smallest path count tried. The
fair CRPS estimates the score of the sampler's distribution whatever the number of paths, so between path
counts of one (T, top_p) it differs by noise only: choosing the count by it would pick by noise, and every
path costs as much to sample as the first. The coverage columns beside it show what more paths change.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import ConfigError, KronosInputError
from .evaluation.selection import check_valid_table
from .forecast_quality import ForecastQuality

#: the columns naming a grid point
SETTINGS = ("T", "top_p", "sample_count")
#: the pooled scores of the sampled model kept per grid point (forecast_quality's table columns)
METRICS = ("n", "coverage_50", "calibrated_50", "coverage_90", "calibrated_90", "crps_return", "crps_skill_vs_rw",
           "hit_rate")
SELECTED_BY = "crps_return"


def scoring_days(calendar: pd.DatetimeIndex, start: str | pd.Timestamp, end: str | pd.Timestamp, every_k_days: int,
                 pred_len: int) -> pd.DatetimeIndex:
    """Every ``every_k_days``-th trading day of [start, end] (from the first) whose ``pred_len`` following
    trading days also lie in [start, end]: the forecasts and every close they are scored on stay in the segment."""
    if every_k_days < 1:
        raise ConfigError(f"every_k_days must be >= 1, got {every_k_days}")
    calendar = pd.DatetimeIndex(calendar)
    inside = calendar[(calendar >= pd.Timestamp(start)) & (calendar <= pd.Timestamp(end))]
    days = inside[:max(len(inside) - pred_len, 0)][::every_k_days]
    if len(days) == 0:
        raise KronosInputError(f"the segment {pd.Timestamp(start).date()}..{pd.Timestamp(end).date()} has "
                               f"{len(inside)} trading days: none has {pred_len} more after it inside the segment")
    return days


def grid_row(segment: str, T: float, top_p: float, sample_count: int, quality: ForecastQuality) -> dict:
    """One row of the grid table: the setting, the segment it was scored on and the model's pooled scores."""
    pooled = quality.summary().loc[quality.model]
    return {"segment": segment, "T": T, "top_p": top_p, "sample_count": sample_count,
            **{name: float(pooled[name]) for name in METRICS}}


def best_setting(table: pd.DataFrame) -> dict:
    """The (T, top_p) with the lowest ``crps_return`` averaged over its path counts (ties: the earlier in the
    table), and the smallest path count of the table (see the module docstring). Refuses a table with a row of
    another segment than valid or with a missing score, so test results can never choose."""
    check_valid_table(table, (*SETTINGS, SELECTED_BY), "calibration grid", "the setting")
    blank = table[SELECTED_BY].isna() | ~np.isfinite(table[SELECTED_BY].astype(float))
    if blank.any():
        point = table.loc[blank.idxmax(), list(SETTINGS)].to_dict()
        raise KronosInputError(f"the grid point {point} has no {SELECTED_BY}: every point must be scored")
    by_point = table.groupby(["T", "top_p"], sort=False)[SELECTED_BY].mean()
    T, top_p = by_point.idxmin()
    return {"T": float(T), "top_p": float(top_p), "sample_count": int(table["sample_count"].min())}
