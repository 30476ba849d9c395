"""A score backtested as the workflows trade it: Qlib's TopkDropout book with their account, benchmark and costs,
for scores that come from outside a qrun record (a study's candidates on valid)."""
from __future__ import annotations

import pandas as pd

from .statistics import mean_t

#: what a study's choice on valid compares: the mean daily excess return over the benchmark, with cost
CRITERION = "excess with cost (daily)"


def backtest(score: pd.Series, config: dict, start: str, end: str) -> pd.DataFrame:
    """Qlib's backtest of ``score`` with a rendered workflow's ``port_analysis_config`` over start..end: the daily
    report (return, bench, cost, turnover)."""
    from qlib.contrib.evaluate import backtest_daily
    from qlib.utils import init_instance_by_config

    port = config["port_analysis_config"]
    strategy = init_instance_by_config({**port["strategy"], "kwargs": {**port["strategy"]["kwargs"],
                                                                       "signal": score.to_frame("score")}})
    bt = port["backtest"]
    report, _ = backtest_daily(start, end, strategy, account=bt["account"], benchmark=bt["benchmark"],
                               exchange_kwargs=bt["exchange_kwargs"])
    return report


def excess_with_cost(report: pd.DataFrame) -> pd.Series:
    """A backtest report's daily portfolio return over the benchmark, net of trading cost."""
    return report["return"] - report["bench"] - report["cost"]


def book(report: pd.DataFrame) -> dict[str, float]:
    """What the backtested book earned: daily excess with and without cost, turnover, annualized figures."""
    from qlib.contrib.evaluate import risk_analysis

    with_cost = excess_with_cost(report)
    risk = risk_analysis(with_cost, freq="day")["risk"]
    stats = mean_t(with_cost)
    return {CRITERION: stats["mean"], "excess with cost t": stats["t"],
            "excess no cost (daily)": float((report["return"] - report["bench"]).mean()),
            "excess with cost (ann.)": float(risk["annualized_return"]),
            "IR with cost": float(risk["information_ratio"]),
            "turnover (daily)": float(report["turnover"].mean())}
