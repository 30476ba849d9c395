"""Which sampling settings give the best-calibrated paths? A grid of temperature x top_p x number of paths,
each scored on a subsample of the VALID segment's days (research/selection.py); test is never sampled.

The trained model is the shipped workflow's, loaded the way users have it: workflows/kronos_csi300.yaml rendered
under the caller's environment variables (QLIB_DATA from --provider, KRONOS_CACHE = <work>/forecasts), the
dataset and KronosModel built from it and ``model.fit(dataset)`` run in --work, which reuses the finished stage
folders (runs/) of an earlier ``qrun`` there, or trains them. Each grid point keeps the weights and changes only
the sampling, so it samples into its own cache folder. Every --every-k-days-th valid day is forecast whose
pred_len-day horizon ends inside valid, and the CSI300 members' forecasts are scored with
kronos_qlib.evaluation.forecast_scores. The winner is the rule declared beforehand: the (T, top_p) with the lowest
pooled fair CRPS of the return over its path counts, with the fewest paths
(research.selection.best_setting).

    python -m research.calibration [--work outputs/full_run] [--provider ../shared/cn_data]
    env $(xargs < workflows/smoke.env) python -m research.calibration --work /tmp/calib \\
        --results /tmp/calib/RESULTS.md --plot /tmp/calib/calibration.png   # the smoke scale
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kronos_qlib.evaluation.forecast_scores import evaluate
from kronos_qlib.evaluation.forecasts import ForecastSet, load_closes, read_forecast_cache
from kronos_qlib.files import atomic_write_text

from research.fitted_model import fit_workflow_model
from research.results import FINDINGS, machine, update_section
from research.selection import SETTINGS, best_setting, grid_row, scoring_days

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SEGMENT = "valid"


def on_days(forecasts: ForecastSet, days: pd.DatetimeIndex) -> ForecastSet:
    """The forecasts made on ``days`` (a cache folder may hold other days, e.g. the run's test days)."""
    keep = forecasts.dates.isin(days)
    return ForecastSet(forecasts.dates[keep], forecasts.instruments[keep], forecasts.closes[keep],
                       forecasts.last_close[keep], forecasts.key)


def sample_days(model, dataset, days: pd.DatetimeIndex, every_k_days: int, market: str) -> ForecastSet:
    """Sample ``days`` (every k-th trading day from days[0], as :func:`scoring_days` picks them) into ``model``'s
    forecast cache and read back the cached paths of the market's members on those days."""
    from kronos_qlib.data import membership

    model.fill_cache(dataset, slice(days[0], days[-1]), shard=(0, every_k_days))
    forecasts = on_days(read_forecast_cache(model.forecast_folder, days[0], days[-1]), days)
    missing = days.difference(forecasts.dates.unique())
    if len(missing):
        raise RuntimeError(f"no forecasts were sampled for {len(missing)} of the chosen days, e.g. "
                           f"{missing[0].date()}, in {model.forecast_folder}")
    return forecasts.members_only(membership(market, days[0], days[-1]), market)


def score_point(model, dataset, days: pd.DatetimeIndex, every_k_days: int, market: str, segment_end: pd.Timestamp,
                window: int, min_history: int):
    """The scores of the market members' paths on ``days`` (see :func:`sample_days`)."""
    forecasts = sample_days(model, dataset, days, every_k_days, market)
    closes = load_closes(forecasts, window)
    if closes.index[-1] > segment_end:  # scoring_days keeps every horizon inside the segment
        raise RuntimeError(f"scoring would read closes up to {closes.index[-1].date()}, past the {SEGMENT} "
                           f"segment's end {segment_end.date()}")
    return evaluate(forecasts, closes, window=window, min_history=min_history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / "outputs" / "full_run"), help="where qrun ran (runs/)")
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.8, 1.0, 1.2])
    parser.add_argument("--top-p", type=float, nargs="+", default=[0.9, 1.0])
    parser.add_argument("--sample-counts", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--every-k-days", type=int, default=10, help="forecast every k-th valid trading day")
    parser.add_argument("--window", type=int, default=60, help="past traded days of the random-walk baselines")
    parser.add_argument("--min-history", type=int, default=20, help="fewest past returns a baseline needs")
    parser.add_argument("--results", default=str(FINDINGS), help="the markdown file whose 'calibration' section "
                                                                "is rewritten")
    parser.add_argument("--plot", default=str(HERE / "calibration.png"))
    args = parser.parse_args()
    results, plot_path = Path(args.results).resolve(), Path(args.plot).resolve()
    work = Path(args.work).resolve()
    logging.getLogger("kronos_qlib").setLevel(logging.WARNING)

    from qlib.data import D

    model, dataset, config = fit_workflow_model(work, args.provider)
    market = config["market"]
    start, end = (pd.Timestamp(d) for d in dataset.segments[SEGMENT])
    days = scoring_days(pd.DatetimeIndex(D.calendar()), start, end, args.every_k_days, model.forecast.pred_len)
    print(f"{SEGMENT} {start.date()}..{end.date()}: forecasting {len(days)} days (every {args.every_k_days}th "
          f"trading day with its {model.forecast.pred_len}-day horizon inside {SEGMENT})", flush=True)
    rows = []
    for T, top_p, count in itertools.product(args.temperatures, args.top_p, args.sample_counts):
        point = copy.copy(model)  # same weights, other sampling: its own cache folder
        point.sampling = dataclasses.replace(model.sampling, T=T, top_p=top_p, sample_count=count)
        began = time.perf_counter()
        quality = score_point(point, dataset, days, args.every_k_days, market, end, args.window, args.min_history)
        rows.append({**grid_row(SEGMENT, T, top_p, count, quality), "seconds": time.perf_counter() - began,
                     "cache": point.forecast_folder.name})
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    table = pd.DataFrame(rows)
    chosen = best_setting(table)
    atomic_write_text(work / "calibration" / "grid.csv", table.to_csv(index=False))
    plot(table, chosen, plot_path)
    update_section("calibration", report(table, chosen, model, dataset, days, args, plot_path, results), results)


def is_chosen(row, chosen: dict) -> bool:
    return all(np.isclose(row[name], chosen[name]) for name in SETTINGS)


def label(row) -> str:
    return f"T={row['T']:g} p={row['top_p']:g} m={int(row['sample_count'])}"


def report(table: pd.DataFrame, chosen: dict, model, dataset, days, args, plot_path: Path, results: Path) -> str:
    """The markdown section: what was run, the rule, the table and the choice."""
    spec, default = model.forecast, model.sampling
    valid, test = dataset.segments[SEGMENT], dataset.segments["test"]
    lines = [
        "## Calibration grid on the valid segment (`python -m research.calibration`)", "",
        f"The shipped workflow's trained Kronos (its finished stages in `{Path(args.work).name}/runs/`), "
        f"re-sampled with each grid point's temperature T, top_p and number of paths m (top_k {default.top_k}, "
        f"seed {default.seed}, {spec.lookback} bars, {spec.pred_len} steps), on a subsample of the {SEGMENT} "
        f"segment {valid[0]}..{valid[1]}: every {args.every_k_days}th trading day whose {spec.pred_len}-day horizon "
        f"ends inside {SEGMENT}, {len(days)} days ({days[0].date()}..{days[-1].date()}), CSI300 members only. "
        f"Test ({test[0]}..{test[1]}) is never sampled or read. Scores are "
        f"kronos_qlib.evaluation.forecast_scores', pooled "
        f"over the steps: band coverage beside the coverage a calibrated sampler with m paths reaches, the fair "
        f"CRPS of the return, its skill against a random walk with the stock's own {args.window}-day volatility "
        f"(same m), the median path's hit rate. The valid segment also picked the training's best checkpoint, so "
        f"these numbers are not out of sample; they only rank the settings.", "",
        "Rule, fixed before the run: the (T, top_p) with the lowest pooled fair CRPS of the return, averaged over "
        "the m tried, wins (a proper score: it rewards calibration and sharpness together), with the smallest m. "
        "The fair CRPS scores the sampler's distribution whatever m is, so between m values of one (T, top_p) it "
        "differs by noise only and cannot choose m; m changes the coverage a finite sample reaches, what the "
        f"signal sees and the cost (seconds: wall time to sample and score the point; days already in its "
        f"cache, e.g. the workflow's own setting after research/signals.py, are not sampled again). "
        f"Machine: {machine()}.", "",
        "| T | top_p | m | forecasts x steps | coverage 50% | calibrated 50% | coverage 90% | calibrated 90% "
        "| CRPS(return) | skill vs RW | hit rate | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        mark = " **(chosen)**" if is_chosen(row, chosen) else ""
        lines.append(f"| {row['T']:g}{mark} | {row['top_p']:g} | {int(row['sample_count'])} | {int(row['n'])} "
                     f"| {row['coverage_50']:.3f} | {row['calibrated_50']:.3f} | {row['coverage_90']:.3f} "
                     f"| {row['calibrated_90']:.3f} | {row['crps_return']:.5f} | {row['crps_skill_vs_rw']:.4f} "
                     f"| {row['hit_rate']:.3f} | {row['seconds']:.0f} |")
    lines += ["", f"Chosen on {SEGMENT}: **T={chosen['T']:g}, top_p={chosen['top_p']:g}, "
              f"sample_count={chosen['sample_count']}** (when this ran, the workflow sampled T={default.T:g}, "
              f"top_p={default.top_p:g}, sample_count={default.sample_count}).", "",
              f"![calibration]({os.path.relpath(plot_path, results.parent)})"]
    return "\n".join(lines)


def plot(table: pd.DataFrame, chosen: dict, path: Path) -> None:
    """CRPS skill vs the random walk and coverage minus calibrated coverage, per grid point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kronos_qlib.files import atomic_write

    names = [f"{label(row)}{'*' if is_chosen(row, chosen) else ''}" for _, row in table.iterrows()]
    x = np.arange(len(table))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    left.bar(x, table["crps_skill_vs_rw"], color="tab:blue")
    left.set_title("CRPS skill of the return vs random walk (higher: better)", fontsize=10)
    for offset, pct in ((-0.2, 50), (0.2, 90)):
        right.bar(x + offset, table[f"coverage_{pct}"] - table[f"calibrated_{pct}"], 0.4, label=f"{pct}% band")
    right.set_title("coverage minus calibrated coverage (< 0: bands too narrow)", fontsize=10)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    fig.suptitle("sampling grid on the valid segment (* chosen: lowest CRPS)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


if __name__ == "__main__":
    main()
