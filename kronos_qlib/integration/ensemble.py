"""An ensemble of two recorded signals, w * g(Kronos) + (1 - w) * g(baseline), g the daily rank-gauss score, with
the equal blend w = 0.5 declared in advance as the default. The baseline is LightGBM / Alpha158 or GRU / Alpha360.

Scores become rank-gauss scores per day: average ranks, (rank - 0.5) / n, through the standard normal quantile.
Their scales differ (a return forecast, a risk measure, a regression output), and unlike a z-score a rank does not
let one outlier move the rest of the day: a single inf made a day's std NaN, and that whole day's Kronos part fell
to zero. Non-finite scores (NaN, +-inf) are dropped before ranking, counted, and logged once per ``combine``.

The baseline's universe is the reference: every (datetime, instrument) row it scores gets a combined score; where
Kronos has none (fewer than ``lookback`` traded bars, suspended on the day, a non-finite value dropped) Kronos's
part is neutral (0, the middle of a rank-gauss day), so those stocks keep the baseline's part on the same scale as
the others and w = 0 reproduces the baseline's ranking on every day. Rows Kronos scores but the baseline does not
are left out.

Why the weight is declared, not chosen: the baseline early-stops on the valid segment and Kronos picks its checkpoint
there, so a weight chosen by valid RankIC is chosen in-sample for both models and flatters whichever fits valid
best. ``choose_weight`` keeps that choice (grid 0..1, best mean daily RankIC on valid) as an option: the valid
predictions come from the recorded models themselves (``params.pkl``), since Qlib's SignalRecord keeps only the
test ones. Either way the test signal is backtested like any other, in a new recorder, by Qlib's SigAnaRecord and
PortAnaRecord (``scripts/ensemble.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..errors import ConfigError
from ..evaluation import daily_ic, labels_inside_segment

logger = logging.getLogger(__name__)

#: Kronos's weight unless told otherwise: the equal blend of the two rank-gauss scores, fixed before any result.
DECLARED_WEIGHT = 0.5
#: The weights of Kronos tried on valid: 0 (the baseline alone) to 1 (Kronos alone) in steps of 0.05.
DEFAULT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


def rank_gauss(score: pd.Series) -> pd.Series:
    """Per day, the standard normal quantile of (average rank - 0.5) / n, for finite scores: the same spread every
    day whatever the scale, ties kept as ties, a day whose scores are all equal at zero."""
    by_day = score.groupby(level="datetime")
    quantile = (by_day.rank(method="average") - 0.5) / by_day.transform("count")
    return pd.Series(norm.ppf(quantile), index=score.index, name=score.name)


def check_same_dates(a: pd.Series, b: pd.Series, a_name: str, b_name: str, segment: str = "test") -> None:
    """Both signals must score the same days: a combination of runs on different dates is an error naming both."""
    days_a = pd.DatetimeIndex(a.index.get_level_values("datetime").unique()).sort_values()
    days_b = pd.DatetimeIndex(b.index.get_level_values("datetime").unique()).sort_values()
    if not days_a.equals(days_b):
        only = days_a.symmetric_difference(days_b)
        raise ConfigError(
            f"cannot combine signals of different {segment} dates: {a_name} scores {days_a[0].date()}.."
            f"{days_a[-1].date()} ({len(days_a)} days), {b_name} {days_b[0].date()}..{days_b[-1].date()} "
            f"({len(days_b)} days); {len(only)} day(s) in only one, the first {only[0].date()}")


@dataclass
class Combination:
    """Both signals as rank-gauss scores on the baseline's rows (Kronos NaN where it has no finite score) and the number
    of non-finite scores dropped from each input ("kronos", "baseline")."""

    kronos: pd.Series
    baseline: pd.Series
    non_finite: dict[str, int]

    def score(self, weight: float) -> pd.Series:
        """w * g(Kronos) + (1 - w) * g(baseline), with g(Kronos) = 0 (neutral) where Kronos has no score."""
        if not 0.0 <= weight <= 1.0:
            raise ConfigError(f"the ensemble weight of Kronos must lie in [0, 1], got {weight}")
        return (weight * self.kronos.fillna(0.0) + (1.0 - weight) * self.baseline).rename("score")


def _finite(score: pd.Series, name: str) -> tuple[pd.Series, int, str]:
    """The finite scores, the number of the others and a note naming the first of them (day, instrument)."""
    ok = np.isfinite(score.to_numpy(dtype=float))
    bad = score.index[~ok].sort_values()
    if bad.empty:
        return score, 0, f"{name} 0"
    day, instrument = bad[0]
    return score[ok], len(bad), f"{name} {len(bad)} (the first {pd.Timestamp(day).date()} {instrument})"


def combine(kronos: pd.Series, baseline: pd.Series, baseline_name: str = "baseline") -> Combination:
    """Both signals on the baseline's (datetime, instrument) rows as daily rank-gauss scores, Kronos ranked among those
    rows only; non-finite scores dropped first, with one warning line naming the count and the first row of each."""
    (kronos, kronos_bad, kronos_note), (baseline, baseline_bad, baseline_note) = (_finite(kronos, "Kronos"),
                                                                                  _finite(baseline, baseline_name))
    if kronos_bad or baseline_bad:
        logger.warning("ensemble: non-finite scores dropped before ranking: %s; %s", kronos_note, baseline_note)
    baseline = baseline.sort_index()
    shared = kronos[kronos.index.isin(baseline.index)]
    if shared.empty:
        raise ConfigError("Kronos scores none of the (datetime, instrument) rows the baseline scores (finite scores)")
    return Combination(rank_gauss(shared).reindex(baseline.index), rank_gauss(baseline),
                       {"kronos": kronos_bad, "baseline": baseline_bad})


@dataclass
class WeightChoice:
    """The chosen weight of Kronos and the valid mean RankIC of every weight tried."""

    weight: float
    valid_rank_ic: pd.Series  # indexed by weight


def choose_weight(kronos_valid: pd.Series, baseline_valid: pd.Series, label_valid: pd.Series,
                  grid: tuple[float, ...] = DEFAULT_GRID) -> WeightChoice:
    """The weight of the grid whose combination has the highest mean daily RankIC on the valid scores and label
    given (ties: the smaller weight, closer to the baseline), leaving out the last valid days, whose label lies in
    test. In-sample for both models: an option, not the default."""
    check_same_dates(kronos_valid, baseline_valid, "Kronos", "the baseline", "valid")
    label_valid = labels_inside_segment(label_valid)
    combination = combine(kronos_valid, baseline_valid)
    scores = {float(w): daily_ic(combination.score(float(w)), label_valid, "spearman").mean() for w in grid}
    table = pd.Series(scores).sort_index().rename_axis("weight").rename("valid mean RankIC")
    if table.isna().all():
        raise ConfigError("no valid day has a baseline score and a label: the valid RankIC is undefined")
    return WeightChoice(float(table.idxmax()), table)


def record_ensemble(experiment: str, pred: pd.Series, label: pd.DataFrame, port_analysis_config: dict,
                    params: dict) -> str:
    """Record the combined test signal in a new recorder of ``experiment`` (pred.pkl, label.pkl, ``params``),
    then run Qlib's SigAnaRecord and PortAnaRecord on it; returns the recorder id."""
    from qlib.workflow import R
    from qlib.workflow.record_temp import PortAnaRecord, SigAnaRecord

    with R.start(experiment_name=experiment):
        recorder = R.get_recorder()
        recorder.log_params(**{key: str(value) for key, value in params.items()})
        recorder.save_objects(**{"pred.pkl": pred.to_frame("score"),
                                 "label.pkl": label.loc[label.index.isin(pred.index)]})
        SigAnaRecord(recorder, ana_long_short=False, ann_scaler=252).generate()
        PortAnaRecord(recorder, config=port_analysis_config).generate()
        return recorder.id
