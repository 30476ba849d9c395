"""Sampling speed: the KV-cached sampler against full recomputation (the original algorithm).

Workload: 300 CSI300 stocks, 90 daily bars of context, 10 steps ahead, 5 sample paths each, on the CPU with
2 threads; Kronos-mini and Kronos-small configs with random weights (speed does not depend on them) and the
Kronos-Tokenizer-base config. Each (model, mode) runs in a fresh process so its peak memory is its own.

    python -m benchmarks.bench_sampling [--provider ../shared/cn_data] [--n-series 300]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from research.results import BENCHMARKS, machine, update_section

HERE = Path(__file__).resolve().parent

MODELS = {"Kronos-mini": "NeoQuasar/Kronos-mini", "Kronos-small": "NeoQuasar/Kronos-small"}
TOKENIZER = "NeoQuasar/Kronos-Tokenizer-base"
DECISION_DATE = "2022-06-30"
CONTEXT, PRED_LEN, SAMPLES = 90, 10, 5


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def load_workload(provider: str, n_series: int):
    """The last 90 traded bars up to the decision date of n_series stocks, and the next 10 trading days.

    CSI300 members with 90 traded bars come first; when fewer qualify (suspensions, missing data), other
    A-shares of the provider fill the batch, so the workload always has n_series series.
    """
    from qlib.data import D

    from kronos_qlib.data import init_qlib, load_bars, membership

    init_qlib(provider)
    calendar = pd.DatetimeIndex(D.calendar(start_time="2021-01-01", end_time="2022-12-31"))
    at = calendar.get_loc(pd.Timestamp(DECISION_DATE))
    future = calendar[at + 1:at + 1 + PRED_LEN]
    members = sorted(membership("csi300", DECISION_DATE, DECISION_DATE))
    others = sorted(set(membership("all", DECISION_DATE, DECISION_DATE)) - set(members) - {"SH000300"})
    bars = load_bars(members + others, calendar[at - 2 * CONTEXT], DECISION_DATE)
    groups = dict(tuple(bars.groupby(level="instrument")))
    dfs, x_ts, n_members = [], [], 0
    for inst in (i for i in members + others if i in groups):
        traded = groups[inst].droplevel("instrument").dropna().iloc[-CONTEXT:]
        if len(traded) == CONTEXT and traded.index[-1] == pd.Timestamp(DECISION_DATE) and len(dfs) < n_series:
            dfs.append(traded)
            x_ts.append(traded.index.to_series())
            n_members += inst in members
    return dfs, x_ts, [future.to_series()] * len(dfs), n_members


def worker(args) -> None:
    """One timed run in this process; prints a JSON line."""
    torch.set_num_threads(args.threads)
    from kronos_qlib import Kronos, KronosPredictor, KronosTokenizer, Sampling
    from kronos_qlib.model.configs import RELEASED

    dfs, x_ts, y_ts, n_members = load_workload(args.provider, args.n_series)
    torch.manual_seed(0)
    tokenizer, model = KronosTokenizer(**RELEASED[TOKENIZER]), Kronos(**RELEASED[MODELS[args.model]])
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=512, batch_size=args.batch_size)
    use_cache = args.mode == "cached"
    predictor.predict_paths(dfs[:4], x_ts[:4], y_ts[:4], PRED_LEN, Sampling(sample_count=SAMPLES), use_cache)
    baseline = rss_mb()
    out = {"model": args.model, "mode": args.mode, "n_series": len(dfs), "n_members": n_members,
           "baseline_rss_mb": baseline}
    for name, kwargs in [("sampled", dict(T=1.0, top_k=0, top_p=0.9)), ("greedy", dict(T=1.0, top_k=1, top_p=1.0))]:
        began = time.perf_counter()
        paths = predictor.predict_paths(dfs, x_ts, y_ts, PRED_LEN, Sampling(sample_count=SAMPLES, seed=0, **kwargs),
                                        use_cache)
        out[f"{name}_seconds"] = time.perf_counter() - began
        if name == "greedy":
            np.save(args.save_greedy, paths)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out), flush=True)


def run_worker(args, model: str, mode: str, save: Path) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--worker", "--model", model, "--mode", mode,
           "--provider", args.provider, "--n-series", str(args.n_series), "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--save-greedy", str(save)]
    print("running", model, mode, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result, flush=True)
    return result


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["model"] for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["recompute_sps"] for r in rows], 0.4, label="recompute (original algorithm)")
    ax.bar(x + 0.2, [r["cached_sps"] for r in rows], 0.4, label="KV cache + shared context")
    for i, r in enumerate(rows):
        ax.text(i + 0.2, r["cached_sps"], f"{r['speedup']:.1f}x", ha="center", va="bottom")
    ax.set_xticks(x, names)
    ax.set_ylabel("series per second")
    ax.set_title(f"daily bars: {rows[0]['n_series']} series, {CONTEXT} bars, {PRED_LEN} steps, {SAMPLES} samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default=str(HERE.parent.parent / "shared" / "cn_data"))
    parser.add_argument("--n-series", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--save-greedy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            runs = {mode: run_worker(args, model, mode, Path(tmp) / f"{model}-{mode}.npy")
                    for mode in ("cached", "recompute")}
            cached, full = (np.load(Path(tmp) / f"{model}-{m}.npy") for m in ("cached", "recompute"))
            rel = np.abs(cached - full) / np.maximum(np.abs(full), 1e-8)
            n = runs["cached"]["n_series"]
            rows.append({
                "model": model, "n_series": n,
                "cached_sps": n / runs["cached"]["sampled_seconds"],
                "recompute_sps": n / runs["recompute"]["sampled_seconds"],
                "speedup": runs["recompute"]["sampled_seconds"] / runs["cached"]["sampled_seconds"],
                "greedy_speedup": runs["recompute"]["greedy_seconds"] / runs["cached"]["greedy_seconds"],
                "max_rel_diff": float(rel.max()),
                "runs": runs,
            })
    plot(rows, HERE / "sampling.png")
    lines = [
        "## Sampling speed (`benchmarks/bench_sampling.py`)", "",
        f"Workload: {rows[0]['n_series']} stocks on {DECISION_DATE} (`../shared/cn_data`: "
        f"{rows[0]['runs']['cached']['n_members']} CSI300 members with 90 traded bars, the rest other A-shares), "
        f"{CONTEXT}-bar daily context, {PRED_LEN} steps, {SAMPLES} sample paths each (T=1, top_p=0.9), "
        f"batches of {args.batch_size} series, CPU with {args.threads} threads, random weights, "
        f"Kronos-Tokenizer-base config. Machine: {machine()}.", "",
        "| model | recompute: series/s | cached: series/s | speedup (sampled) | speedup (greedy) "
        "| peak RSS recompute / cached (MB) | RSS growth recompute / cached (MB) | greedy max rel. diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, f = r["runs"]["cached"], r["runs"]["recompute"]
        lines.append(
            f"| {r['model']} | {r['recompute_sps']:.2f} | {r['cached_sps']:.1f} | {r['speedup']:.1f}x | "
            f"{r['greedy_speedup']:.1f}x | {f['peak_rss_mb']:.0f} / {c['peak_rss_mb']:.0f} | "
            f"{f['peak_rss_mb'] - f['baseline_rss_mb']:.0f} / {c['peak_rss_mb'] - c['baseline_rss_mb']:.0f} | "
            f"{r['max_rel_diff']:.1e} |")
    lines += ["", "Recompute is the original algorithm (`use_cache=False`): every context repeated per sample, "
              "the whole window re-run at each step. Peak RSS is the whole process (Python, torch, Qlib, data); "
              "RSS growth is the peak minus the resident size just before the timed runs. "
              "Greedy max rel. diff compares all 6 columns of every greedy path, cached vs recompute.", "",
              "![sampling speed](sampling.png)"]
    update_section("sampling", "\n".join(lines), BENCHMARKS)


if __name__ == "__main__":
    main()
