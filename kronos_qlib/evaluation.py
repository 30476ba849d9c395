"""Reading recorded qrun experiments back and putting them side by side (scripts/compare.py, the notebooks)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError


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
    """One row of the comparison table."""
    with_cost, without_cost = _risk(run.excess_return(True)), _risk(run.excess_return(False))
    absolute = _risk(run.report["return"] - run.report["cost"])
    return {
        "IC": run.ic.mean(), "ICIR": run.ic.mean() / run.ic.std(),
        "RankIC": run.rank_ic.mean(), "RankICIR": run.rank_ic.mean() / run.rank_ic.std(),
        "excess return (ann., with cost)": with_cost["annualized_return"],
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


def _joined(score: pd.Series, label: pd.Series) -> pd.DataFrame:
    return pd.concat([score.rename("score"), label.rename("label")], axis=1, join="inner").dropna()


def group_returns(score: pd.Series, label: pd.Series, groups: int = 5) -> pd.DataFrame:
    """Mean label of each score quantile per day (``(datetime, instrument)``-indexed series); column 1 holds the
    lowest scores."""
    def by_group(day: pd.DataFrame) -> pd.Series:
        ranks = day["score"].rank(method="first")
        bucket = pd.qcut(ranks, groups, labels=range(1, groups + 1))
        return day["label"].groupby(bucket, observed=False).mean()

    return _joined(score, label).groupby(level="datetime").apply(by_group)


def daily_ic(score: pd.Series, label: pd.Series, method: str = "pearson") -> pd.Series:
    """Cross-sectional correlation of score and label per day (``method="spearman"``: RankIC)."""
    return _joined(score, label).groupby(level="datetime").apply(lambda d: d["score"].corr(d["label"], method=method))


def residualize(score: pd.Series, control: pd.Series) -> pd.Series:
    """The part of ``score`` that ``control`` does not explain: per day, the residual of a least-squares fit of
    score on control (with intercept). Its IC with the label is the score's partial (residual) IC."""
    joined = pd.concat([score.rename("score"), control.rename("control")], axis=1, join="inner").dropna()

    def residual(day: pd.DataFrame) -> pd.Series:
        x = day["control"] - day["control"].mean()
        beta = (x * day["score"]).sum() / (x * x).sum() if (x * x).sum() > 0 else 0.0
        return day["score"] - day["score"].mean() - beta * x

    return joined.groupby(level="datetime", group_keys=False).apply(residual).rename(score.name)


def residual_ic(score: pd.Series, control: pd.Series, label: pd.Series) -> dict[str, float]:
    """IC and RankIC of what ``score`` adds beyond ``control`` (the partial IC: of :func:`residualize`'s residual),
    with the t-statistic of the daily values: does the score still predict once the control's part is removed?"""
    residual = residualize(score, control)
    out = {}
    for name, method in (("IC", "pearson"), ("RankIC", "spearman")):
        daily = daily_ic(residual, label, method).dropna()
        out[f"residual {name}"] = daily.mean()
        out[f"residual {name} t"] = daily.mean() / daily.std() * np.sqrt(len(daily))
    return out


def signal_metrics(score: pd.Series, label: pd.Series, groups: int = 5) -> dict[str, float]:
    """IC, ICIR, RankIC, RankICIR and the daily long-short (top minus bottom quantile) spread with its t-statistic,
    as Qlib's SigAnaRecord reports them (ICIR: mean / std of the daily values, not annualized)."""
    ic, rank_ic = daily_ic(score, label), daily_ic(score, label, "spearman")
    quantiles = group_returns(score, label, groups)
    spread = (quantiles[groups] - quantiles[1]).dropna()
    return {"IC": ic.mean(), "ICIR": ic.mean() / ic.std(), "RankIC": rank_ic.mean(),
            "RankICIR": rank_ic.mean() / rank_ic.std(), "long-short spread (daily)": spread.mean(),
            "long-short t": spread.mean() / spread.std() * np.sqrt(len(spread)), "days": float(len(ic))}


def universe_return(run: RecordedRun) -> pd.Series:
    """Daily return of holding every scored stock equally (mean label), before costs: the naive alternative a
    top-k portfolio should beat, since a cap-weighted index can lag its average member for years."""
    return run.label.iloc[:, 0].groupby(level="datetime").mean()


def drawdown(returns: pd.Series) -> pd.Series:
    """Drawdown of the cumulative (summed) returns, as Qlib measures max drawdown."""
    cumulative = returns.cumsum()
    return cumulative - cumulative.cummax()


def signal_correlation(a: RecordedRun, b: RecordedRun) -> pd.Series:
    """Daily cross-sectional rank correlation between two runs' scores, on the stocks both scored."""
    joined = pd.concat([a.pred.iloc[:, 0].rename("a"), b.pred.iloc[:, 0].rename("b")], axis=1).dropna()
    return joined.groupby(level="datetime").apply(lambda d: d["a"].corr(d["b"], method="spearman"))


def plot_cumulative_excess(runs: list[RecordedRun], path: str | Path | None = None, ax=None,
                           title: str = "cumulative excess return over the benchmark"):
    """Cumulative excess return over the benchmark, with cost (solid) and without (dashed)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 4))
    for run, color in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        ax.plot(run.excess_return(True).cumsum(), color=color, label=f"{run.experiment} (with cost)")
        ax.plot(run.excess_return(False).cumsum(), color=color, ls="--", alpha=0.6,
                label=f"{run.experiment} (no cost)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("cumulative excess return (sum of daily)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
    return ax


def plot_training_curves(run: RecordedRun, path: str | Path | None = None):
    """Train and valid loss of each stage by epoch (one panel per stage), as recorded under qrun."""
    import matplotlib.pyplot as plt

    stages = sorted({key.split("/")[0] for key in run.curves.columns})
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for split in ("train", "valid"):
            column = f"{stage}/{split}_loss"
            if column in run.curves:
                ax.plot(run.curves.index, run.curves[column], marker="o", label=f"{split} loss")
        ax.set_title(f"{run.experiment}: {stage} stage")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


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
