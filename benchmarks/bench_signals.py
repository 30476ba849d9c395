"""Every signal of kronos_qlib.signals, scored on the dev split from the forecast cache of the full Kronos run.

Reads the run that `benchmarks/bench_workflows.py` recorded (default outputs/full_run): its model (`params.pkl`),
the shipped workflow's dataset rendered with the same variables, and its forecast cache. For the valid and the
test segment, each signal's IC, ICIR, RankIC, RankICIR and long-short (top minus bottom quintile) daily spread
with its t-statistic. The valid segment is forecast once (the run itself only forecast test); nothing on test is
sampled again. The best signal is chosen on valid alone (highest mean RankIC) before test is looked at.
`low_forecast_risk` is also scored after removing a 20-day realized volatility, the part plain history explains.

    python benchmarks/bench_signals.py [--work outputs/full_run] [--provider ../shared/cn_data]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from results import machine, update_section  # noqa: E402

SEGMENTS = ("valid", "test")
RISK_CONTROL_BARS = 20


def load(work: Path, provider: str):
    """The recorded KronosModel and the workflow's dataset, as qrun built them (run from ``work``)."""
    import qlib
    from qlib.utils import init_instance_by_config
    from qlib.workflow import R

    from kronos_qlib.qrun import WORKFLOWS, load_workflow

    os.chdir(work)  # the workflow's relative paths (mlruns.db, runs/) are where qrun ran
    config = load_workflow(WORKFLOWS / "kronos_csi300.yaml",
                           {"QLIB_DATA": str(Path(provider).resolve()), "KRONOS_CACHE": str(work / "forecasts")})
    qlib.init(**config["qlib_init"])
    recorders = R.get_exp(experiment_name="kronos_csi300", create=False).list_recorders()
    finished = {k: r for k, r in recorders.items() if r.status == "FINISHED"}
    recorder = finished[max(finished, key=lambda k: finished[k].info["start_time"])]
    model = recorder.load_object("params.pkl")
    return model, init_instance_by_config(config["task"]["dataset"]), recorder.id


def realized_volatility(dataset, end: str) -> pd.Series:
    """Std of the last RISK_CONTROL_BARS daily log returns (traded days) up to each day, per instrument."""
    closes = dataset.handler.bars(end)["close"].dropna()
    log_ret = np.log(closes).groupby(level="instrument").diff()
    vol = log_ret.groupby(level="instrument").rolling(RISK_CONTROL_BARS).std().droplevel(0)
    return vol.swaplevel().sort_index().rename("vol")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / "outputs" / "full_run"))
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    args = parser.parse_args()

    from kronos_qlib.evaluation import daily_ic, residualize, signal_metrics
    from kronos_qlib.signals import SIGNALS, check_signal

    model, dataset, recorder_id = load(Path(args.work).resolve(), args.provider)
    spec, sampling = model.forecast, model.sampling
    vol = realized_volatility(dataset, dataset.segments["test"][1])
    rows, scores = {}, {}
    for segment in SEGMENTS:
        label = dataset.prepare(segment, col_set="label").iloc[:, 0]
        for name in SIGNALS:
            model.signal, model.signal_start = name, 1
            model.signal_end = check_signal(name, spec.pred_len, sampling.sample_count, 1, None)
            score = model.predict(dataset, segment)
            scores[segment, name] = score
            rows[segment, name] = signal_metrics(score, label)
            print(segment, name, {k: round(v, 4) for k, v in rows[segment, name].items()}, flush=True)
        risk = scores[segment, "low_forecast_risk"]
        rows[segment, "low_forecast_risk"]["IC after 20-day vol"] = daily_ic(residualize(risk, vol), label).mean()
        rows[segment, "low_forecast_risk"]["IC of -(20-day vol)"] = daily_ic(-vol, label).mean()

    chosen = max(SIGNALS, key=lambda name: rows["valid", name]["RankIC"])
    table = pd.DataFrame({(segment, metric): {name: rows[segment, name][metric] for name in SIGNALS}
                          for segment in SEGMENTS for metric in ("IC", "ICIR", "RankIC", "RankICIR",
                                                                 "long-short spread (daily)", "long-short t")})
    plot(table, chosen, HERE / "signals.png")
    lines = [
        "## Signals on the dev split (`benchmarks/bench_signals.py`)", "",
        f"The CPU-preset Kronos of the full workflow run (recorder {recorder_id}), its forecasts ({spec.lookback} "
        f"bars, {spec.pred_len} steps, {sampling.sample_count} paths, T={sampling.T}, top_p={sampling.top_p}) turned "
        f"into each signal over the tradable window, step 1 (the close of t + 1) to step {spec.pred_len}. Valid "
        f"{dataset.segments['valid'][0]}..{dataset.segments['valid'][1]}, test {dataset.segments['test'][0]}.."
        f"{dataset.segments['test'][1]}; label: close t + 1 to close t + 2. Long-short: mean daily return of the "
        f"top minus the bottom score quintile, t = mean / std x sqrt(days). Chosen on valid (highest RankIC) before "
        f"test was read: **{chosen}**. Machine: {machine()}.", "",
        "| signal | valid IC | valid ICIR | valid RankIC | valid RankICIR | test IC | test ICIR | test RankIC "
        "| test RankICIR | test long-short (bp/day) | test long-short t |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SIGNALS:
        v, t = rows["valid", name], rows["test", name]
        mark = " (chosen)" if name == chosen else ""
        lines.append(f"| {name}{mark} | {v['IC']:.4f} | {v['ICIR']:.3f} | {v['RankIC']:.4f} | {v['RankICIR']:.3f} "
                     f"| {t['IC']:.4f} | {t['ICIR']:.3f} | {t['RankIC']:.4f} | {t['RankICIR']:.3f} "
                     f"| {1e4 * t['long-short spread (daily)']:.2f} | {t['long-short t']:.2f} |")
    risk_v, risk_t = rows["valid", "low_forecast_risk"], rows["test", "low_forecast_risk"]
    lines += ["", f"How much of `low_forecast_risk` plain history explains: its IC is {risk_v['IC']:.4f} (valid) and "
              f"{risk_t['IC']:.4f} (test); after removing a {RISK_CONTROL_BARS}-day realized volatility (per-day "
              f"cross-sectional regression) it is {risk_v['IC after 20-day vol']:.4f} and "
              f"{risk_t['IC after 20-day vol']:.4f}; the low-volatility factor itself, minus the 20-day volatility, "
              f"scores {risk_v['IC of -(20-day vol)']:.4f} and {risk_t['IC of -(20-day vol)']:.4f}.", "",
              "![signals](signals.png)"]
    update_section("signals", "\n".join(lines))


def plot(table: pd.DataFrame, chosen: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = np.arange(len(table))
    for offset, segment in ((-0.2, "valid"), (0.2, "test")):
        ax.bar(x + offset, table[segment, "RankIC"], 0.4, label=f"{segment} RankIC")
    ax.set_xticks(x, [f"{n}*" if n == chosen else n for n in table.index], rotation=30, ha="right")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title("mean daily RankIC of each signal (* chosen on valid)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
