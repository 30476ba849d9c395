"""An ensemble of two recorded signals, w * z(Kronos) + (1 - w) * z(LightGBM), with w chosen on valid only.

Scores are turned into cross-sectional z-scores per day (their scales differ: a return forecast, a risk measure,
a regression output), and the weight is the one of a grid over [0, 1] whose combination has the highest mean
daily RankIC on the valid segment. The test segment plays no part in the choice; it is then backtested like
any other signal, in a new recorder, by Qlib's SigAnaRecord and PortAnaRecord (``scripts/ensemble.py``).

Qlib's SignalRecord keeps only the test predictions, so the valid ones come from the recorded models themselves
(``params.pkl``) predicting the valid segment of their workflow's dataset: KronosModel reads (or fills) its
forecast cache there, LightGBM predicts from Alpha158.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..evaluation import daily_ic

#: The weights of Kronos tried on valid: 0 (LightGBM alone) to 1 (Kronos alone) in steps of 0.05.
DEFAULT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


def cross_sectional_z(score: pd.Series) -> pd.Series:
    """(score - day mean) / day std, per day; a day whose scores are all equal gets zeros."""
    by_day = score.groupby(level="datetime")
    std = by_day.transform("std").replace(0.0, np.nan)
    return ((score - by_day.transform("mean")) / std).fillna(0.0).rename(score.name)


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


def combine(kronos: pd.Series, lgb: pd.Series, weight: float) -> pd.Series:
    """w * z(kronos) + (1 - w) * z(lgb) on the (datetime, instrument) rows both scored."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"the ensemble weight of Kronos must lie in [0, 1], got {weight}")
    joined = pd.concat([kronos.rename("kronos"), lgb.rename("lgb")], axis=1, join="inner").dropna()
    if joined.empty:
        raise ConfigError("the two signals share no (datetime, instrument) row")
    z = weight * cross_sectional_z(joined["kronos"]) + (1.0 - weight) * cross_sectional_z(joined["lgb"])
    return z.rename("score").sort_index()


@dataclass
class WeightChoice:
    """The chosen weight of Kronos and the valid mean RankIC of every weight tried."""

    weight: float
    valid_rank_ic: pd.Series  # indexed by weight


def choose_weight(kronos_valid: pd.Series, lgb_valid: pd.Series, label_valid: pd.Series,
                  grid: tuple[float, ...] = DEFAULT_GRID) -> WeightChoice:
    """The weight of the grid whose combination has the highest mean daily RankIC on the valid scores and label
    given (ties: the smaller weight, closer to the baseline)."""
    check_same_dates(kronos_valid, lgb_valid, "Kronos", "LightGBM", "valid")
    scores = {float(w): daily_ic(combine(kronos_valid, lgb_valid, float(w)), label_valid, "spearman").mean()
              for w in grid}
    table = pd.Series(scores).sort_index().rename_axis("weight").rename("valid mean RankIC")
    if table.isna().all():
        raise ConfigError("no valid day has both signals and a label: the valid RankIC is undefined")
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
