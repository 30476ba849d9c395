"""Choosing the shipped signal on the valid segment, by what a long-only TopkDropout book earns, never on test.

A RankIC rewards the whole ranking, while a long-only top-50 book earns only from the top tail, after costs: the
signal, its window, the number of sampled paths and the smoothing half-life are chosen together by the book's
daily excess return over the benchmark, with cost, in Qlib's own backtest of the valid segment with the
workflow's strategy and costs. The rule, fixed before any result is seen (:func:`choose_signal`):

1. A challenger must be eligible: positive valid IC, RankIC and top-quintile spread (the mean label of the top
   score quintile over the mean of the day's quintile means), so that a score ranking the wrong way does not win
   by luck of the book.
2. Every eligible challenger is backtested; the one with the highest mean daily excess return with cost is the
   best challenger.
3. The incumbent (:func:`incumbent`: ``expected_return``, the mean over paths of the return over the whole
   tradable window, unsmoothed, the constructor's default) is the prior: it stays, eligible or not, unless the
   best challenger beats it by more than :data:`MARGIN_SE` Newey-West standard errors of their paired daily
   difference. The best challenger is the best of many, so its t is biased upward and a margin of 2 is lenient
   towards challengers; a challenger that wins must still be confirmed on test and across seeds.

Rows of any other segment than valid are refused, and so are backtested days after the last valid day whose label
lies inside valid (:func:`kronos_qlib.evaluation.metrics.labels_inside_segment`), so test figures can never
choose. The criterion is :data:`kronos_qlib.evaluation.backtest.CRITERION`, the mean daily excess with cost of
the book :func:`kronos_qlib.evaluation.backtest.book` reads off a backtest.

The sampling settings are chosen on valid too (:func:`best_setting`, research/calibration.py): the
(T, top_p) whose pooled fair CRPS of the return, averaged over the path counts tried, is lowest
(CRPS is a proper score: it rewards calibration and sharpness at once), with the smallest path count tried. The
fair CRPS estimates the score of the sampler's distribution whatever the number of paths, so between path
counts of one (T, top_p) it differs by noise only: choosing the count by it would pick by noise, and every
path costs as much to sample as the first. The coverage columns beside it show what more paths change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from kronos_qlib.errors import ConfigError, KronosInputError
from kronos_qlib.evaluation.forecast_scores import ForecastQuality
from kronos_qlib.evaluation.statistics import NW_LAG, paired_difference

VALID = "valid"
#: the eligibility scores, each must be > 0
ELIGIBILITY = ("IC", "RankIC", "top quintile spread (daily)")
MARGIN_SE = 2.0


@dataclass(frozen=True)
class Candidate:
    """One way to turn sampled paths into the shipped score: the signal over steps start..end of the first
    ``paths`` sampled paths, smoothed across days with ``halflife`` (None: not smoothed)."""

    signal: str
    start: int
    end: int
    paths: int
    halflife: float | None = None

    @property
    def name(self) -> str:
        smooth = "-" if self.halflife is None else f"{self.halflife:g}"
        return f"{self.signal} {self.start}..{self.end} m{self.paths} h{smooth}"


def incumbent(pred_len: int, paths: int) -> Candidate:
    """The default the rule must beat: expected_return over the whole tradable window, unsmoothed."""
    return Candidate("expected_return", 1, pred_len, paths, None)


def check_valid_table(table: pd.DataFrame, columns: tuple[str, ...], what: str, chosen: str) -> None:
    """``table`` has the ``columns`` (and ``segment``), some rows, and only rows of the valid segment: a choice
    made from it (``chosen``, e.g. "the signal") can never have read test."""
    missing = [name for name in ("segment", *columns) if name not in table.columns]
    if missing:
        raise ConfigError(f"the {what} table lacks the column(s) {missing}")
    if table.empty:
        raise KronosInputError(f"the {what} table has no rows")
    others = sorted(set(table["segment"]) - {VALID})
    if others:
        raise KronosInputError(f"the {what} table holds rows of segment(s) {others}: {chosen} is chosen on "
                               f"'{VALID}' alone")


def _check_valid(table: pd.DataFrame, columns: tuple[str, ...]) -> None:
    check_valid_table(table, columns, "signal", "the signal")


def eligible(table: pd.DataFrame) -> pd.Series:
    """Rows whose valid IC, RankIC and top-quintile spread are all positive."""
    _check_valid(table, ELIGIBILITY)
    return (table[list(ELIGIBILITY)] > 0).all(axis=1)


@dataclass
class SignalChoice:
    """The rule's outcome: the chosen candidate, the best challenger it was compared with and their paired test."""

    chosen: str
    challenger: str | None
    difference: float  # mean daily excess with cost, challenger minus incumbent
    t: float  # its Newey-West t (lag NW_LAG)
    reason: str

    def to_dict(self) -> dict:
        return {**asdict(self), "margin_se": MARGIN_SE, "nw_lag": NW_LAG}


def choose_signal(table: pd.DataFrame, daily_excess: dict[str, pd.Series], incumbent_name: str,
                  last_day: str | pd.Timestamp) -> SignalChoice:
    """Apply the rule (module docstring) to the valid table (index: candidate names) and the backtested daily
    excess returns with cost (candidate name -> daily series) of the incumbent and every eligible challenger, none
    of which may reach past ``last_day`` (the last valid day whose label lies inside valid)."""
    _check_valid(table, ELIGIBILITY)
    if incumbent_name not in daily_excess:
        raise KronosInputError(f"the incumbent '{incumbent_name}' was not backtested")
    for name, series in daily_excess.items():
        if len(series) and series.index.max() > pd.Timestamp(last_day):
            raise KronosInputError(f"the backtest of '{name}' runs to {series.index.max().date()}, past the last "
                                   f"valid day {pd.Timestamp(last_day).date()} whose label lies inside valid: the "
                                   "signal is chosen on valid alone")
    challengers = [name for name in table.index[eligible(table)] if name != incumbent_name]
    missing = [name for name in challengers if name not in daily_excess]
    if missing:
        raise KronosInputError(f"{len(missing)} eligible challengers were not backtested, e.g. '{missing[0]}': "
                               f"every one must be")
    if not challengers:
        return SignalChoice(incumbent_name, None, float("nan"), float("nan"),
                            "no eligible challenger: the incumbent stays")
    challenger = max(challengers, key=lambda name: daily_excess[name].mean())  # ties: the first in the table
    paired = paired_difference(daily_excess[challenger], daily_excess[incumbent_name])
    if np.isfinite(paired["t"]) and paired["t"] > MARGIN_SE:
        reason = f"the challenger beats the incumbent by {paired['t']:.2f} > {MARGIN_SE:g} standard errors"
        return SignalChoice(challenger, challenger, paired["mean"], paired["t"], reason)
    reason = (f"the best challenger's paired t is {paired['t']:.2f}, not above {MARGIN_SE:g}: the incumbent stays")
    return SignalChoice(incumbent_name, challenger, paired["mean"], paired["t"], reason)


# ------------------------------------------------------------------ the sampling grid (research/calibration.py)
#: the columns naming a point of the sampling grid
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
