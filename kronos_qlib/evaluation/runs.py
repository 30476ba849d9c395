"""Reading recorded qrun experiments back and putting them side by side (scripts/compare.py, the notebooks)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .metrics import group_returns, rank_correlation
from .statistics import mean_t


@dataclass
class RecordedRun:
    """What SignalRecord, SigAnaRecord and PortAnaRecord stored for one run."""

    experiment: str
    recorder_id: str
    pred: pd.DataFrame
    label: pd.DataFrame
    ic: pd.Series
    rank_ic: pd.Series
    report: pd.DataFrame  # daily: return, bench, cost, turnover, ...
    curves: pd.DataFrame  # per-epoch training metrics "<stage>/<name>" by epoch (empty for models that log none)

    def excess_return(self, with_cost: bool = True) -> pd.Series:
        """Daily portfolio return over the benchmark, net of trading cost unless ``with_cost`` is False."""
        excess = self.report["return"] - self.report["bench"]
        return excess - self.report["cost"] if with_cost else excess


def init_recorder_store(mlflow_uri: str, provider_uri: str | None = None) -> None:
    """Point Qlib's experiment manager at an MLflow store (e.g. ``sqlite:///mlruns.db``), quietly: reading a few
    small artifacts needs neither MLflow's progress bars nor Qlib's start-up log."""
    import qlib

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    kwargs = {"provider_uri": str(Path(provider_uri).expanduser())} if provider_uri else {}
    qlib.init(exp_manager={"class": "MLflowExpManager", "module_path": "qlib.workflow.expm",
                           "kwargs": {"uri": mlflow_uri, "default_exp_name": "compare"}},
              logging_level=logging.WARNING, **kwargs)


def load_run(experiment: str, recorder_id: str | None = None) -> RecordedRun:
    """The latest (or the given) finished run of ``experiment``."""
    from qlib.workflow import R

    try:
        recorders = R.get_exp(experiment_name=experiment, create=False).list_recorders()
    except ValueError as err:
        raise ConfigError(f"no recorded experiment '{experiment}' in the MLflow store: run its workflow first") from err
    if not recorders:
        raise ConfigError(f"experiment '{experiment}' has no recorded run")
    if recorder_id is None:
        finished = {k: r for k, r in recorders.items() if r.status == "FINISHED"} or recorders
        recorder_id = max(finished, key=lambda k: finished[k].info["start_time"])
    rec = R.get_recorder(recorder_id=recorder_id, experiment_name=experiment)
    try:
        return RecordedRun(experiment, recorder_id, rec.load_object("pred.pkl"), rec.load_object("label.pkl"),
                           rec.load_object("sig_analysis/ic.pkl"), rec.load_object("sig_analysis/ric.pkl"),
                           rec.load_object("portfolio_analysis/report_normal_1day.pkl"), training_curves(rec))
    except Exception as err:  # the recorder raises several types for a missing artifact
        raise ConfigError(f"run {recorder_id} of '{experiment}' lacks a signal or portfolio artifact: {err}") from err


def training_curves(recorder) -> pd.DataFrame:
    """Every per-epoch metric a run logged as ``<stage>/<name>`` (KronosModel's training), indexed by epoch."""
    keys = [key for key in recorder.list_metrics() if "/" in key]
    history = {key: pd.Series({m.step: m.value for m in recorder.client.get_metric_history(recorder.id, key)})
               for key in keys}
    return pd.DataFrame(history).rename_axis("epoch").sort_index()


def annualized(returns: pd.Series) -> float:
    """Annualized mean daily return, with Qlib's convention for daily data (238 trading days, summed)."""
    return _risk(returns)["annualized_return"]


def _risk(returns: pd.Series) -> dict[str, float]:
    """Annualized return, information ratio and max drawdown as Qlib computes them (sum of daily returns)."""
    from qlib.contrib.evaluate import risk_analysis

    risk = risk_analysis(returns, freq="day")["risk"]
    return {"annualized_return": float(risk["annualized_return"]),
            "information_ratio": float(risk["information_ratio"]), "max_drawdown": float(risk["max_drawdown"])}


def summarize(run: RecordedRun) -> dict[str, float]:
    """One row of the comparison table; each daily mean (IC, RankIC, excess return) with its Newey-West t."""
    excess = run.excess_return(True)
    with_cost, without_cost = _risk(excess), _risk(run.excess_return(False))
    absolute = _risk(run.report["return"] - run.report["cost"])
    return {
        "IC": run.ic.mean(), "IC t": mean_t(run.ic)["t"], "ICIR": run.ic.mean() / run.ic.std(),
        "RankIC": run.rank_ic.mean(), "RankIC t": mean_t(run.rank_ic)["t"],
        "RankICIR": run.rank_ic.mean() / run.rank_ic.std(),
        "excess return (ann., with cost)": with_cost["annualized_return"],
        "excess t (daily, with cost)": mean_t(excess)["t"],
        "information ratio (with cost)": with_cost["information_ratio"],
        "max drawdown (with cost)": with_cost["max_drawdown"],
        "excess return (ann., no cost)": without_cost["annualized_return"],
        "portfolio return (ann., with cost)": absolute["annualized_return"],
        "portfolio Sharpe (with cost)": absolute["information_ratio"],
        "turnover (daily mean)": float(run.report["turnover"].mean()),
        "test days": float(len(run.report)),
    }


def comparison_table(runs: list[RecordedRun]) -> pd.DataFrame:
    return pd.DataFrame({run.experiment: summarize(run) for run in runs}).T


def quantile_returns(run: RecordedRun, groups: int = 5) -> pd.DataFrame:
    """Mean label (next-day return) of each score quantile per day; column 1 holds the lowest scores."""
    return group_returns(run.pred.iloc[:, 0], run.label.iloc[:, 0], groups)


def signal_correlation(a: RecordedRun, b: RecordedRun) -> pd.Series:
    """Daily cross-sectional rank correlation between two runs' scores, on the stocks both scored."""
    return rank_correlation(a.pred.iloc[:, 0], b.pred.iloc[:, 0])


def universe_return(run: RecordedRun) -> pd.Series:
    """Daily return of holding every scored stock equally (mean label), before costs: the naive alternative a
    top-k portfolio should beat, since a cap-weighted index can lag its average member for years."""
    return run.label.iloc[:, 0].groupby(level="datetime").mean()


def format_table(table: pd.DataFrame) -> str:
    """Markdown, with percentages where they read better."""
    shown = table.copy()
    for col in shown.columns:
        if "return" in col or "drawdown" in col or "turnover" in col:
            shown[col] = shown[col].map(lambda v: f"{100 * v:.2f}%")
        elif col == "test days":
            shown[col] = shown[col].map(lambda v: f"{v:.0f}")
        else:
            shown[col] = shown[col].map(lambda v: f"{v:.4f}" if np.isfinite(v) else "n/a")
    header = "| run | " + " | ".join(shown.columns) + " |"
    rule = "|---" * (len(shown.columns) + 1) + "|"
    rows = [f"| {name} | " + " | ".join(map(str, row)) + " |" for name, row in shown.iterrows()]
    return "\n".join([header, rule, *rows])
