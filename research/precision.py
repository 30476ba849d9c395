"""What reduced precision changes on trained weights: the CPU preset trained by the scaling study (the point its
preset rule picks, or any finished run given by --stages), sampled at fp32, int8 and bf16 on every
--every-k-days-th valid day of the dev split, CSI300 members only.

Random weights (benchmarks/bench_forecasting.py) have near-uniform token distributions, where a small change of the
logits moves many draws; trained ones are peaked. For each precision, against fp32:

- greedy agreement: the share of greedy (top_k 1, one path) closes within 0.1% of fp32's greedy close;
- signal Spearman: the mean daily rank correlation of the shipped signal (the workflow's signal, window and paths,
  unsmoothed as the days are a subsample, winsorized and clipped as KronosModel.predict scores it) with fp32's, same
  sampling seed;
- fair CRPS skill of the return against a random walk with the stock's own volatility, and band coverage.

A second fp32 run with another sampling seed is the noise floor: what two fp32 runs agree to when only the draws
differ. Speed is benchmarks/bench_forecasting.py's table (it does not depend on the weights). Each setting samples
into its own cache folder under --work/forecasts (the cache keys on precision and sampling), so a rerun reads them.

    python -m research.precision [--work outputs/scaling] [--stages <run folder with tokenizer/ predictor/>]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from kronos_qlib.evaluation import rank_correlation

from research.calibration import sample_days, score_point
from research.fitted_model import fit_workflow_model
from research.results import machine, update_section
from research.scaling import choose_preset, read_records
from research.selection import Candidate, scoring_days
from research.signals import daily_scores

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

REDUCED = ("int8", "bf16")
NOISE_SEED = 1  # the fp32 reference samples with seed 0 (the workflow's), the noise floor with this one


def forecast_settings(model, dataset, days: pd.DatetimeIndex, every_k_days: int) -> dict:
    """Under ``model``'s current precision and sampling: its daily signal, its greedy closes and its path scores."""
    end = pd.Timestamp(dataset.segments["valid"][1])
    market = dataset.handler.market
    quality = score_point(model, dataset, days, every_k_days, market, end, window=60, min_history=20)
    # the workflow's signal, window and paths; unsmoothed, as the days are a subsample
    signal = Candidate(model.signal, model.signal_start, model.signal_end, model.sampling.sample_count)
    scores, _ = daily_scores(model, dataset, slice(days[0], days[-1]), [signal], shard=(0, every_k_days))
    sampling = model.sampling
    model.sampling = dataclasses.replace(sampling, top_k=1, top_p=1.0, sample_count=1)
    greedy = sample_days(model, dataset, days, every_k_days, market)
    model.sampling = sampling
    closes = pd.DataFrame(greedy.closes[:, 0, :], index=pd.MultiIndex.from_arrays([greedy.dates, greedy.instruments]))
    return {"signal": scores[signal.name], "greedy": closes.sort_index(), "quality": quality.summary().loc["kronos"]}


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Share of greedy closes of ``a`` within 0.1% of ``b``'s, on the forecasts both have."""
    x, y = a.align(b, join="inner", axis=0)
    return float(np.mean(np.abs(x.to_numpy() - y.to_numpy()) <= 1e-3 * np.abs(y.to_numpy())))


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Mean over days of the rank correlation of two daily scores."""
    return float(rank_correlation(a, b).mean())


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kronos_qlib.files import atomic_write

    frame = pd.DataFrame(rows).set_index("run")[["greedy agreement", "signal Spearman"]]
    ax = frame.plot.bar(figsize=(7, 3.4), rot=0)
    ax.axhline(0.95, color="grey", ls="--", lw=0.8, label="0.95")
    ax.set_ylim(0, 1.05)
    ax.set_title("agreement with fp32 on trained weights (fp32 seed 1: the sampling noise floor)", fontsize=9)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    atomic_write(path, lambda f: ax.figure.savefig(f, format="png", dpi=120))
    plt.close(ax.figure)


def report(rows: list[dict], stages: Path, days: pd.DatetimeIndex, every_k_days: int, paths: int) -> str:
    lines = [
        "## Reduced precision on trained weights (`python -m research.precision`)", "",
        f"The CPU preset's trained weights ({stages.name}), the shipped workflow's sampling ({paths} paths), on "
        f"every {every_k_days}th valid day {days[0].date()}..{days[-1].date()} ({len(days)} days), CSI300 "
        f"members. Against fp32 with the same sampling seed: greedy agreement (share of greedy closes within 0.1% "
        f"of fp32's), the mean daily Spearman correlation of the shipped signal, and the fair CRPS skill of the "
        f"return against a random walk. The fp32 row with sampling seed {NOISE_SEED} is the noise floor: two fp32 "
        f"runs that differ only in their draws. Speed: see the forecasting section. Machine: {machine()}.", "",
        "| precision | greedy agreement | signal Spearman vs fp32 | CRPS skill | coverage 50% / 90% |",
        "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['greedy agreement']:.3f} | {r['signal Spearman']:.3f} | "
                     f"{r['CRPS skill']:.4f} | {r['coverage 50']:.3f} / {r['coverage 90']:.3f} |")
    floor = next(r for r in rows if r["run"].startswith("fp32, seed"))
    for r in rows:
        if r["run"] in REDUCED:
            keeps = r["signal Spearman"] >= 0.95
            noise = abs(floor["CRPS skill"] - rows[0]["CRPS skill"])
            within = abs(r["CRPS skill"] - rows[0]["CRPS skill"]) <= max(noise, 1e-4)
            redraw = "more" if r["signal Spearman"] < floor["signal Spearman"] else "less"
            lines += ["", f"{r['run']}: signal Spearman {r['signal Spearman']:.3f}, {'at least' if keeps else 'below'} "
                      f"0.95; it changes the signal {redraw} than drawing the paths again in fp32 does "
                      f"({floor['signal Spearman']:.3f}). CRPS skill {'within' if within else 'outside'} the two "
                      f"fp32 seeds' difference ({noise:.4f})."]
    lines += ["", "![precision](precision.png)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / "outputs" / "scaling"), help="the scaling study's --work")
    parser.add_argument("--stages", default=None, help="a finished run folder (tokenizer/best, predictor/best); "
                                                       "default: the scaling point the preset rule picks")
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    parser.add_argument("--every-k-days", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = Path(args.work).resolve()
    stages = (Path(args.stages) if args.stages else
              work / "points" / choose_preset(read_records())).resolve()
    weights = {"finetune": None, "tokenizer": str(stages / "tokenizer" / "best"),
               "predictor": str(stages / "predictor" / "best"), "precision": "fp32"}
    model, dataset, _ = fit_workflow_model(work, args.provider, weights)
    from qlib.data import D

    start, end = dataset.segments["valid"]
    days = scoring_days(pd.DatetimeIndex(D.calendar()), start, end, args.every_k_days, model.forecast.pred_len)
    sampling = model.sampling
    runs = {}
    for name, precision, seed in [("fp32", "fp32", sampling.seed), (f"fp32, seed {NOISE_SEED}", "fp32", NOISE_SEED),
                                  *[(p, p, sampling.seed) for p in REDUCED]]:
        print(f"sampling {name}", flush=True)
        model.precision, model.sampling = precision, dataclasses.replace(sampling, seed=seed)
        runs[name] = forecast_settings(model, dataset, days, args.every_k_days)
    reference = runs["fp32"]
    rows = [{"run": name, "greedy agreement": agreement(r["greedy"], reference["greedy"]),
             "signal Spearman": spearman(r["signal"], reference["signal"]),
             "CRPS skill": float(r["quality"]["crps_skill_vs_rw"]), "coverage 50": float(r["quality"]["coverage_50"]),
             "coverage 90": float(r["quality"]["coverage_90"])} for name, r in runs.items()]
    print(pd.DataFrame(rows).to_string(index=False))
    plot(rows, HERE / "precision.png")
    update_section("precision", report(rows, stages, days, args.every_k_days, sampling.sample_count))


if __name__ == "__main__":
    main()
