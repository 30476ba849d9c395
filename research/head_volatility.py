"""Is the return head's ranking volatility? Its test score against the volatility of Kronos's own path forecasts.

    python -m research.head_volatility --work <folder where both workflows ran> [--provider ../shared/cn_data]

The path signals' RankIC is mostly volatility (a low-volatility tilt). This reads, from one folder where
workflows/kronos_head_csi300.yaml and workflows/kronos_csi300.yaml ran with the same seed (one mlruns.db, the
shared generative stages in runs/, the path forecasts in forecasts/: e.g. a seed folder of research/seeds.py), the
head's recorded test scores and the sampled paths of every test stock-day, and scores three signals on test:

- the head as recorded;
- path volatility: `low_forecast_risk` over the path signal's steps (minus the mean over paths of the std of their
  daily log returns; high = calm);
- the head neutralised against it: per day, the head's rank residualised on the path volatility's rank.

Each: IC, RankIC with Newey-West t, and Qlib's TopkDropout backtest with the workflow's strategy and costs on the
head run's own backtest days; then the head's daily rank correlation with path volatility, its partial IC given it,
and the paired daily difference neutralised minus head. No setting is chosen here: nothing is fitted on test.
Writes the section "head-volatility" of research/head_study.md, head_volatility.json and head_volatility.png.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from kronos_qlib.evaluation import (daily_ic, format_table, init_recorder_store, load_run, mean_t, paired_difference,
                                    partial_ic, signal_metrics)
from kronos_qlib.evaluation.backtest import CRITERION, backtest, book, excess_with_cost
from kronos_qlib.evaluation.metrics import rank_correlation, residualize
from kronos_qlib.files import atomic_write_text
from kronos_qlib.integration.daily_forecasts import path_scores

from research.fitted_model import fit_workflow_model
from research.results import machine, update_section

HERE = Path(__file__).resolve().parent
HEAD, VOLATILITY, NEUTRAL = "head", "path volatility (low_forecast_risk)", "head neutralised against path volatility"


def day_ranks(score: pd.Series) -> pd.Series:
    return score.groupby(level="datetime").rank(pct=True)


def neutralised(score: pd.Series, control: pd.Series) -> pd.Series:
    """Per day, the rank of ``score`` less its least-squares fit on the rank of ``control``."""
    return residualize(day_ranks(score), day_ranks(control)).rename("score")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--provider", default="../shared/cn_data")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work.resolve()
    init_recorder_store(f"sqlite:///{work / 'mlruns.db'}", str(Path(args.provider).resolve()))
    head = load_run("kronos_head_csi300")
    model, dataset, config = fit_workflow_model(work, args.provider)  # finished stages and cached paths reused
    volatility = path_scores(model.day_forecasts(dataset, "test"), "low_forecast_risk", model.signal_start,
                             model.signal_end, model.price_limit)
    label = head.label.iloc[:, 0]
    scores = {HEAD: head.pred.iloc[:, 0], VOLATILITY: volatility}
    scores[NEUTRAL] = neutralised(scores[HEAD], volatility)
    days = head.report.index
    excess, rank_ic, rows = {}, {}, {}
    for name, score in scores.items():
        report = head.report if name == HEAD else backtest(score, config, str(days[0].date()), str(days[-1].date()))
        excess[name], rank_ic[name] = excess_with_cost(report), daily_ic(score, label, "spearman")
        metrics = signal_metrics(score, label)
        rows[name] = {**{m: metrics[m] for m in ("IC", "IC t", "RankIC", "RankIC t")}, **book(report)}
    correlation = mean_t(rank_correlation(scores[HEAD], volatility))
    partial = partial_ic(scores[HEAD], volatility, label)
    paired = {"RankIC": paired_difference(rank_ic[NEUTRAL], rank_ic[HEAD]),
              "excess with cost (daily)": paired_difference(excess[NEUTRAL], excess[HEAD])}
    table = pd.DataFrame.from_dict(rows, orient="index")
    record = {"work": str(work), "head recorder": head.recorder_id, "test days": len(days),
              "table": table.to_dict(orient="index"), "rank correlation with path volatility": correlation,
              "partial IC given path volatility": partial, "neutralised minus head": paired, "machine": machine()}
    atomic_write_text(args.out / "head_volatility.json", json.dumps(record, indent=1, default=float))
    plot(excess, args.out / "head_volatility.png")
    shown = table[["IC", "RankIC", "RankIC t", "excess with cost t", "IR with cost", "turnover (daily)"]].copy()
    shown.insert(3, "excess with cost (bp/day)", table[CRITERION] * 1e4)
    lines = [
        "## The head against path volatility on test (`python -m research.head_volatility`)", "",
        f"The shipped head's recorded test scores (recorder {head.recorder_id}) and the path forecasts of the same "
        f"seed's path workflow (5 paths, its T and top_p) on every test stock-day, {days[0].date()}..{days[-1].date()} "
        f"({len(days)} backtest days); books: the workflow's TopkDropout 50/5 with its costs. Work folder "
        f"`{work.name}`. Machine: {record['machine']}.", "", format_table(shown), "",
        f"The head's daily rank correlation with path volatility (high = calm): {correlation['mean']:+.3f} "
        f"(Newey-West t {correlation['t']:.2f}); its partial IC given it {partial['partial IC']:+.4f} "
        f"(t {partial['partial IC t']:.2f}), partial RankIC {partial['partial RankIC']:+.4f} "
        f"(t {partial['partial RankIC t']:.2f}). Neutralised minus head, paired daily: RankIC "
        f"{paired['RankIC']['mean']:+.4f} (t {paired['RankIC']['t']:.2f}); excess with cost "
        f"{paired['excess with cost (daily)']['mean'] * 1e4:+.2f} bp/day "
        f"(t {paired['excess with cost (daily)']['t']:.2f}).",
        "", "![head against path volatility](head_volatility.png)"]
    update_section("head-volatility", "\n".join(lines), args.out / "head_study.md")


def plot(excess: dict[str, pd.Series], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for name, series in excess.items():
        ax.plot(series.index, series.cumsum(), label=name)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(title="Test: cumulative excess with cost (TopkDropout 50/5)", ylabel="cumulative excess return")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
