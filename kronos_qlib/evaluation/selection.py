"""Choosing the shipped signal on the valid segment, by what a long-only TopkDropout book earns, never on test.

A RankIC rewards the whole ranking, while a long-only top-50 book earns only from the top tail, after costs: the
signal, its window, the number of sampled paths and the smoothing half-life are chosen together by the book's
daily excess return over the benchmark, with cost, in Qlib's own backtest of the valid segment. The rule, fixed
before any result is seen (:func:`choose_signal`):

1. Eligible: positive valid IC, RankIC and top-quintile spread (the mean label of the top score quintile over the
   day's mean): a score that ranks the wrong way and earns by luck is not shipped.
2. Screening: Qlib's backtest costs seconds per candidate, so the eligible candidates are ranked by a proxy, the
   daily top-k equal-weight label over the universe mean minus the top k's turnover times the round-trip cost,
   and the best :data:`FINALISTS` are backtested, beside the incumbent.
3. The incumbent (:func:`incumbent`: the mean path return over the whole tradable window, the earlier default)
   stays unless the finalist with the highest mean daily excess return with cost beats it by more than
   :data:`MARGIN_SE` Newey-West standard errors of their paired daily difference.

Rows of any other segment than valid are refused, so test figures can never choose.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from ..errors import ConfigError, KronosInputError
from .statistics import NW_LAG, paired_difference

VALID = "valid"
#: the settings a candidate is made of (columns of the valid table)
SETTINGS = ("signal", "start", "end", "paths", "halflife")
#: the eligibility scores, each must be > 0
ELIGIBILITY = ("IC", "RankIC", "top quintile spread (daily)")
#: the screening proxy's column, and the backtested criterion's
PROXY = "top-k excess net (daily)"
CRITERION = "excess with cost (daily)"
FINALISTS = 12
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


def finalists(table: pd.DataFrame, count: int = FINALISTS) -> list[str]:
    """The ``count`` eligible rows (index: candidate names) with the best screening proxy."""
    _check_valid(table, (PROXY,))
    return table[eligible(table)].sort_values(PROXY, ascending=False, kind="stable").index[:count].tolist()


@dataclass
class SignalChoice:
    """The rule's outcome: the chosen candidate, the best finalist it was compared with and their paired test."""

    chosen: str
    challenger: str | None
    difference: float  # mean daily excess with cost, challenger minus incumbent
    t: float  # its Newey-West t (lag NW_LAG)
    reason: str

    def to_dict(self) -> dict:
        return {**asdict(self), "margin_se": MARGIN_SE, "nw_lag": NW_LAG}


def choose_signal(table: pd.DataFrame, daily_excess: dict[str, pd.Series], incumbent_name: str) -> SignalChoice:
    """Apply the rule (module docstring) to the valid table and the backtested daily excess returns with cost
    (candidate name -> daily series) of the incumbent and the finalists."""
    _check_valid(table, (*ELIGIBILITY, PROXY))
    if incumbent_name not in daily_excess:
        raise KronosInputError(f"the incumbent '{incumbent_name}' was not backtested")
    backtested = [name for name in finalists(table) if name in daily_excess and name != incumbent_name]
    if not backtested:
        return SignalChoice(incumbent_name, None, float("nan"), float("nan"),
                            "no eligible challenger: the incumbent stays")
    means = {name: float(daily_excess[name].mean()) for name in backtested}
    challenger = max(backtested, key=lambda name: (means[name], -backtested.index(name)))
    paired = paired_difference(daily_excess[challenger], daily_excess[incumbent_name])
    if np.isfinite(paired["t"]) and paired["t"] > MARGIN_SE:
        reason = f"the challenger beats the incumbent by {paired['t']:.2f} > {MARGIN_SE:g} standard errors"
        return SignalChoice(challenger, challenger, paired["mean"], paired["t"], reason)
    reason = (f"the best challenger's paired t is {paired['t']:.2f}, not above {MARGIN_SE:g}: the incumbent stays")
    return SignalChoice(incumbent_name, challenger, paired["mean"], paired["t"], reason)
