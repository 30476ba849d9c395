"""The forecasting stage of the default backtest: series/s and projected wall time, by precision, batching and
processes, against the original algorithm.

Workload: CSI300 members on ``--days`` trading days spread over the default test segment (2020-01-01 ..
2022-12-30), each with its 90-bar context, 10 steps, 5 paths (T=1, top_p=0.9), through the same call
``KronosModel.predict`` makes (``PathForecasts.sample``: one call across all the days, batches of 64). Random
weights of the Kronos-mini / Kronos-small configs with the Kronos-Tokenizer-base one, and of the CPU preset's pair
(speed does not depend on them). Each model's fp32 ceiling is measured in its own process as bench_sampling
measures it (batched full-window forwards of each network, the same workload per series), and every row is
reported as a share of it.
The projection divides the number of forecasts of the whole stage (every member with 90 traded bars on every
test day, counted from the data) by the measured series/s. Every run is a fresh process; "2 processes" runs
two at once with one thread each, each on every other day (what ``scripts/forecast.py`` under torchrun does), and
counts both halves over the slower one's time.

Reduced precision is scored against fp32 on the same forecasts: greedy agreement (share of greedy (series, step)
closes within 0.1% of fp32's) and the mean daily Spearman correlation of the ``expected_return`` signal from
sampled paths.

    python -m benchmarks.bench_forecasting [--device cpu] [--models Kronos-mini Kronos-small] [--days 4]
    python -m benchmarks.bench_forecasting --device cuda --precisions fp32 bf16     # on a GPU, same table
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.bench_sampling import MODELS, ceiling, networks
from research.results import BENCHMARKS, machine, update_section

HERE = Path(__file__).resolve().parent

TEST = ("2020-01-01", "2022-12-30")
MARKET = "csi300"


def load(provider: str, days: list[str] | None, shard: tuple[int, int] = (0, 1)):
    """(KronosModel without weights, the plan of its forecasts on ``days``: None, every test day; every
    ``shard[1]``-th day from the ``shard[0]``-th)."""
    from qlib.data import D

    from kronos_qlib import KronosBarsHandler, KronosModel
    from kronos_qlib.data import BarPanel, init_qlib
    from kronos_qlib.integration.daily_forecasts import Plan

    init_qlib(provider)
    start, end = (days[0], days[-1]) if days else TEST
    model = KronosModel(cache_dir=None, sampling={"T": 1.0, "top_p": 0.9, "sample_count": 5, "seed": 0},
                        forecast={"lookback": 90, "pred_len": 10})
    handler = KronosBarsHandler(MARKET, start_time=start, end_time=end, history=90)
    calendar = pd.DatetimeIndex(D.calendar())
    wanted = pd.DatetimeIndex(days) if days else calendar[(calendar >= TEST[0]) & (calendar <= TEST[1])]
    panel = BarPanel.from_frame(handler.bars(end))
    return model, Plan.build(panel, handler.universe, MARKET, calendar, wanted, model.forecast, "test", shard)


def worker(args) -> None:
    """One timed run in this process; prints a JSON line and saves the paths."""
    import torch

    torch.set_num_threads(args.threads)
    from kronos_qlib.inference.forecast_cache import ForecastCache
    from kronos_qlib.integration.daily_forecasts import PathForecasts

    if args.ceiling:
        print(json.dumps(ceiling(*networks(args.model), device=args.device)), flush=True)
        return
    model, plan = load(args.provider, args.day_list, tuple(args.shard))
    requests = plan.requests
    if args.limit:  # the first `limit` series of the first day (the original algorithm is slow)
        day = min(requests)
        requests = {day: dict(sorted(requests[day].items())[:args.limit])}
    model.tokenizer, model.model = networks(args.model)
    if args.greedy:
        model.sampling = type(model.sampling)(top_k=1, top_p=1.0, sample_count=1)
    forecasts = PathForecasts(plan, model.tokenizer, model.model, model.sampling, ForecastCache(None, {}),
                              args.batch_size, args.device, args.precision)
    if args.original:
        sample = forecasts.predictor.predict_paths_from_arrays
        forecasts.predictor.predict_paths_from_arrays = lambda *a, **k: sample(*a, **k, use_cache=False)
    warm = min(requests)
    forecasts.sample({warm: dict(list(requests[warm].items())[:4])})
    groups = [[day] for day in sorted(requests)] if args.per_day else [sorted(requests)]
    out = {}
    began = time.perf_counter()
    for group in groups:
        out.update(forecasts.sample({day: requests[day] for day in group}))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    keys = sorted((day, inst) for day in out for inst in out[day])
    np.savez(args.save, paths=np.stack([out[d][i][0] for d, i in keys]), last=np.array([out[d][i][1] for d, i in keys]),
             days=np.array([f"{d:%Y-%m-%d}" for d, _ in keys]), instruments=np.array([i for _, i in keys]))
    print(json.dumps({"n_series": len(keys), "seconds": seconds}), flush=True)


def run(args, model: str, tmp: Path, name: str, precision: str = "fp32", processes: int = 1, per_day: bool = False,
        greedy: bool = False, original: bool = False, limit: int = 0, days: list[str] | None = None) -> dict:
    """Run ``processes`` workers at once; n_series is their sum and seconds the slowest one's."""
    days = days or args.day_list
    base = [sys.executable, "-m", __spec__.name, "--worker", "--model", model, "--provider", args.provider, "--device",
            args.device, "--batch-size", str(args.batch_size), "--precision", precision, "--day-list", *days,
            "--threads", str(max(1, args.threads // processes)), "--limit", str(limit)]
    flags = [flag for flag, on in (("--per-day", per_day), ("--greedy", greedy), ("--original", original)) if on]
    saves = [tmp / f"{model}-{name}-{i}.npz" for i in range(processes)]
    print(f"running {model} {name}", flush=True)
    procs = [subprocess.Popen(base + flags + ["--shard", str(i), str(processes), "--save", str(saves[i])],
                              stdout=subprocess.PIPE, text=True) for i in range(processes)]
    results = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{model} {name} failed ({proc.returncode})")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    row = {"n_series": sum(r["n_series"] for r in results), "seconds": max(r["seconds"] for r in results)}
    row["sps"] = row["n_series"] / row["seconds"]
    loaded = [np.load(s) for s in saves]
    row["arrays"] = {key: np.concatenate([f[key] for f in loaded]) for key in ("paths", "last", "days", "instruments")}
    print(f"  {row['n_series']} series in {row['seconds']:.1f} s: {row['sps']:.1f} series/s", flush=True)
    return row


def fp32_ceiling(args, model: str) -> float:
    """``model``'s fp32 ceiling in series/s (bench_sampling's measure), in a fresh process like every run."""
    cmd = [sys.executable, "-m", __spec__.name, "--worker", "--ceiling", "--model", model, "--device", args.device,
           "--threads", str(args.threads)]
    print(f"running {model} ceiling", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["ceiling_sps"]


def aligned(row: dict, other: dict) -> tuple[dict, dict]:
    """Both rows' arrays on the (day, instrument) forecasts they share, in the same order."""
    def keyed(r):
        a = r["arrays"]
        return {(d, i): n for n, (d, i) in enumerate(zip(a["days"], a["instruments"]))}
    mine, theirs = keyed(row), keyed(other)
    common = sorted(mine.keys() & theirs.keys())
    return tuple({k: v[[index[c] for c in common]] for k, v in r["arrays"].items()}
                 for r, index in ((row, mine), (other, theirs)))


def greedy_agreement(reduced: dict, reference: dict) -> float:
    x, y = (a["paths"][..., 3] for a in aligned(reduced, reference))
    return float(np.mean(np.abs(x - y) <= 1e-3 * np.abs(y)))


def signal_correlation(reduced: dict, reference: dict) -> float:
    """Mean over days of the Spearman correlation of expected_return (steps 1..10) with fp32's."""
    from kronos_qlib.signals import compute_signal

    x, y = aligned(reduced, reference)
    corr = []
    for day in np.unique(x["days"]):
        m = x["days"] == day
        a = compute_signal("expected_return", x["paths"][m].astype(np.float64), x["last"][m], 1, 10)
        b = compute_signal("expected_return", y["paths"][m].astype(np.float64), y["last"][m], 1, 10)
        corr.append(pd.Series(a).corr(pd.Series(b), method="spearman"))
    return float(np.mean(corr))


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    labels = [f"{m}\n{r}" for m, r in zip(table["model"], table["run"])]
    ax.barh(range(len(table)), table["projected_min"], color=[f"C{MODELS.index(m)}" for m in table["model"]])
    ax.axvline(30, color="k", ls="--", lw=1, label="30 min target (Kronos-mini)")
    ax.set_yticks(range(len(table)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("projected forecasting stage of the 3-year backtest (minutes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default=str(HERE.parent.parent / "shared" / "cn_data"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8", "bf16"])
    parser.add_argument("--days", type=int, default=4, help="test days the speed is measured on")
    parser.add_argument("--one-day", nargs="*", default=["bf16"],
                        help="precisions measured on the first of those days only (bf16 is slow on most CPUs)")
    parser.add_argument("--original-series", type=int, default=24, help="series the original algorithm runs on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--results", default=str(BENCHMARKS), help="the markdown file whose 'forecasting' section "
                                                                "is rewritten (and beside it the PNG)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--day-list", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--shard", nargs=2, type=int, default=[0, 1], help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--per-day", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--greedy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--original", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.days < 2:
        parser.error("--days must be at least 2: the 2-process runs take every other day")

    _, plan = load(args.provider, None)
    test_days = sorted(plan.requests)
    total = plan.total
    args.day_list = [f"{test_days[i]:%Y-%m-%d}" for i in np.linspace(0, len(test_days) - 1, args.days).astype(int)]
    reduced = [p for p in args.precisions if p != "fp32"]
    rows, quality, ceilings = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model in args.models:
            ceilings[model] = fp32_ceiling(args, model)
            runs = {("fp32", "cross-day", 1): run(args, model, tmp, "fp32")}
            runs[("fp32", "per-day", 1)] = run(args, model, tmp, "fp32-perday", per_day=True)
            for p in reduced:
                days = args.day_list[:1] if p in args.one_day else None
                runs[(p, "cross-day", 1)] = run(args, model, tmp, p, precision=p, days=days)
            runs[("fp32", "cross-day", 2)] = run(args, model, tmp, "fp32-2proc", processes=2)
            fastest = max(reduced, key=lambda p: runs[(p, "cross-day", 1)]["sps"], default="fp32")
            if fastest != "fp32":
                runs[(fastest, "cross-day", 2)] = run(args, model, tmp, f"{fastest}-2proc", precision=fastest,
                                                      processes=2)
            first_day = args.day_list[:1]
            original = run(args, model, tmp, "original", original=True, limit=args.original_series, days=first_day)
            cached = run(args, model, tmp, "cached-subset", limit=args.original_series, days=first_day)
            greedy = {p: run(args, model, tmp, f"{p}-greedy", precision=p, greedy=True, days=first_day)
                      for p in ["fp32", *reduced]}
            for (precision, batching, processes), r in runs.items():
                rows.append({"model": model, "run": f"{precision}, {batching}, {processes} proc",
                             "measured": r["n_series"], "series_per_s": r["sps"],
                             "share_of_ceiling": r["sps"] / ceilings[model],
                             "projected_min": total / r["sps"] / 60,
                             "vs_original": r["sps"] / original["sps"],
                             "vs_fp32": r["sps"] / runs[("fp32", "cross-day", 1)]["sps"]})
            for p in reduced:
                quality.append({"model": model, "precision": p,
                                "greedy_agreement": greedy_agreement(greedy[p], greedy["fp32"]),
                                "signal_spearman": signal_correlation(runs[(p, "cross-day", 1)],
                                                                      runs[("fp32", "cross-day", 1)])})
            quality.append({"model": model, "precision": "original vs cached (subset)",
                            "original_sps": original["sps"], "cached_sps": cached["sps"],
                            "ratio": cached["sps"] / original["sps"]})
    table = pd.DataFrame(rows)
    results = Path(args.results)
    plot(table, results.parent / "forecasting.png")
    lines = [
        "## Forecasting stage at scale (`benchmarks/bench_forecasting.py`)", "",
        f"The forecasting stage of the default backtest: {total:,} forecasts (every CSI300 member with 90 traded bars "
        f"on each of {len(test_days)} test days, {TEST[0]}..{TEST[1]}), 90-bar context, 10 steps, 5 paths (T=1, "
        f"top_p=0.9), batches of {args.batch_size}, random weights. Measured on {len(args.day_list)} days spread over "
        f"the segment ({', '.join(args.day_list)}; {runs[('fp32', 'cross-day', 1)]['n_series']} forecasts) on "
        f"`{args.device}` with {args.threads} threads in all; projected = {total:,} / series per second. "
        f"Machine: {machine()}.", "",
        "The fp32 ceiling (bench_sampling's: batched full-window forwards of each network, the least a sampler must "
        "process per series) in series/s: " + ", ".join(f"{m} {c:.1f}" for m, c in ceilings.items()) + ".", "",
        "| model | run (precision, batching, processes) | forecasts measured | series/s | share of fp32 ceiling | "
        "projected stage (min) | vs fp32 cross-day | vs original algorithm |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['run']} | {r['measured']} | {r['series_per_s']:.1f} | "
                     f"{r['share_of_ceiling']:.0%} | {r['projected_min']:.1f} | "
                     f"{r['vs_fp32']:.2f}x | {r['vs_original']:.1f}x |")
    lines += ["", "What reduced precision changes (against fp32, same forecasts): greedy agreement is the share "
              f"of greedy (series, step) closes within 0.1% of fp32's on {args.day_list[0]}; signal Spearman is the "
              "mean daily rank correlation of `expected_return` from the sampled paths. These are random weights, "
              "whose token distributions are near uniform, so a small change of the logits moves many draws; for "
              "trained weights see the section on reduced precision (bench_precision.py).", "",
              "| model | precision | greedy agreement | signal Spearman vs fp32 |", "|---|---|---|---|"]
    for q in quality:
        if "ratio" not in q:
            lines.append(f"| {q['model']} | {q['precision']} | {q['greedy_agreement']:.3f} | "
                         f"{q['signal_spearman']:.3f} |")
    lines += ["", f"The original algorithm (`use_cache=False`: each context repeated per path, the whole window "
              f"re-run each step) on the first {args.original_series} series of {args.day_list[0]}, against the "
              "cached sampler (fp32) on the same series; the last column of the first table divides by this "
              "original speed.", "", "| model | original series/s | cached series/s | ratio |", "|---|---|---|---|"]
    for q in quality:
        if "ratio" in q:
            lines.append(f"| {q['model']} | {q['original_sps']:.2f} | {q['cached_sps']:.1f} | {q['ratio']:.1f}x |")
    lines += ["", "![forecasting stage](forecasting.png)"]
    update_section("forecasting", "\n".join(lines), results)


if __name__ == "__main__":
    main()
