"""Sampling speed: the KV-cached sampler against the machine's limit and against full recomputation (the original
algorithm).

Workload: 300 CSI300 stocks, 90 daily bars of context, 10 steps ahead, 5 sample paths each, on the CPU with
2 threads; the Kronos-mini and Kronos-small configs and the CPU preset's predictor with random weights (speed
does not depend on them) and the Kronos-Tokenizer-base config (the CPU preset's own tokenizer for its row). Each
(model, run) is a fresh process so its peak memory is its own.

The ceiling is what the same networks allow when nothing but batched forwards of full windows run: tokens per
second of the tokenizer's encoder, of the predictor's trunk, of the whole predictor (trunk and both heads) and of
the tokenizer's decoder, each the best over batches of 16, 64 and 320 windows; a series costs what a cached sampler
must process at the least: 90 context tokens encoded and through the trunk, 5 x 10 generated tokens through the
whole predictor, and 90 + 5 x 10 through the decoder. Each sampler row is reported as a share of its model's fp32
ceiling.

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

MODELS = ["Kronos-mini", "Kronos-small", "cpu preset"]
TOKENIZER = "NeoQuasar/Kronos-Tokenizer-base"
#: the runs of each model: (name, sampler, precision)
RUNS = [("cached", True, "fp32"), ("cached int8", True, "int8"), ("recompute", False, "fp32")]
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


def networks(name: str):
    """Random weights of the named configs: (tokenizer, predictor)."""
    from kronos_qlib import Kronos, KronosTokenizer
    from kronos_qlib.model.configs import RELEASED
    from kronos_qlib.training import config_from_dict

    torch.manual_seed(0)
    if name == "cpu preset":
        config = config_from_dict({"preset": "cpu", "output_dir": "unused"})
        return KronosTokenizer(**config.tokenizer_config).eval(), Kronos(**config.predictor_config).eval()
    return KronosTokenizer(**RELEASED[TOKENIZER]).eval(), Kronos(**RELEASED[f"NeoQuasar/{name}"]).eval()


@torch.inference_mode()
def ceiling(tokenizer, model, rows: tuple[int, ...] = (16, 64, 320), reps: int = 3, device: str = "cpu") -> dict:
    """Tokens per second of each network's batched forward over full windows (the best over batches of ``rows``
    windows and ``reps`` repeats: a 2-core VM is noisy, and the best batch differs by network), and the series per
    second they allow a sampler that does the least it must: encode the context, run it through the predictor's
    trunk, run each generated token through the trunk and both heads, and decode all of them."""
    window = CONTEXT + PRED_LEN
    tokenizer, model = tokenizer.to(device), model.to(device)

    def best(run) -> float:
        run()
        times = []
        for _ in range(reps):
            began = time.perf_counter()
            run()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        return min(times)

    tps: dict[str, float] = {}
    for n in rows:
        x = torch.randn(n, window, 6, device=device)
        stamp = torch.randint(0, 5, (n, window, 5), device=device).float()
        s1, s2 = tokenizer.encode(x, half=True)
        measured = {
            "encode": n * CONTEXT / best(lambda: tokenizer.encode(x[:, :CONTEXT], half=True)),
            "predictor trunk": n * window / best(lambda: model.hidden_states(s1, s2, stamp)),
            # both heads at every position, the s2 one conditioned on the s1 tokens
            "predictor": n * window / best(lambda: model(s1, s2, stamp, use_teacher_forcing=True, s1_targets=s1)),
            "decode": n * window / best(lambda: tokenizer.decode((s1, s2), half=True))}
        tps = {key: max(value, tps.get(key, 0.0)) for key, value in measured.items()}
    generated = SAMPLES * PRED_LEN
    seconds = (CONTEXT / tps["encode"] + CONTEXT / tps["predictor trunk"] + generated / tps["predictor"]
               + (CONTEXT + generated) / tps["decode"])
    return {"tokens_per_s": tps, "ceiling_sps": 1 / seconds}


def worker(args) -> None:
    """One timed run in this process; prints a JSON line."""
    torch.set_num_threads(args.threads)
    from kronos_qlib import KronosPredictor, Sampling

    tokenizer, model = networks(args.model)
    if args.run == "ceiling":
        print(json.dumps({"model": args.model, **ceiling(tokenizer, model)}), flush=True)
        return
    use_cache, precision = {name: (cached, precision) for name, cached, precision in RUNS}[args.run]
    dfs, x_ts, y_ts, n_members = load_workload(args.provider, args.n_series)
    if not use_cache:  # the original algorithm is slow: the first series only
        dfs, x_ts, y_ts = dfs[:args.recompute_series], x_ts[:args.recompute_series], y_ts[:args.recompute_series]
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=512, batch_size=args.batch_size,
                                precision=precision)
    predictor.predict_paths(dfs[:4], x_ts[:4], y_ts[:4], PRED_LEN, Sampling(sample_count=SAMPLES), use_cache)
    baseline = rss_mb()
    out = {"model": args.model, "run": args.run, "n_series": len(dfs), "n_members": n_members,
           "baseline_rss_mb": baseline}
    for name, kwargs in [("sampled", dict(T=1.0, top_k=0, top_p=0.9)), ("greedy", dict(T=1.0, top_k=1, top_p=1.0))]:
        began = time.perf_counter()
        paths = predictor.predict_paths(dfs, x_ts, y_ts, PRED_LEN, Sampling(sample_count=SAMPLES, seed=0, **kwargs),
                                        use_cache)
        out[f"{name}_seconds"] = time.perf_counter() - began
        out[f"{name}_sps"] = len(dfs) / out[f"{name}_seconds"]
        if name == "greedy":
            np.save(args.save_greedy, paths)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out), flush=True)


def run_worker(args, model: str, run: str, save: Path) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--worker", "--model", model, "--run", run,
           "--provider", args.provider, "--n-series", str(args.n_series), "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--recompute-series", str(args.recompute_series),
           "--save-greedy", str(save)]
    print("running", model, run, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result, flush=True)
    return result


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(rows))
    bars = [("fp32 ceiling", lambda r: r["ceiling"]["ceiling_sps"]), ("cached fp32", lambda r: r["cached_sps"]),
            ("cached int8", lambda r: r["int8_sps"]), ("recompute (original)", lambda r: r["recompute_sps"])]
    width = 0.8 / len(bars)
    for i, (label, value) in enumerate(bars):
        ax.bar(x + (i - 1.5) * width, [value(r) for r in rows], width, label=label)
    for i, r in enumerate(rows):
        ax.text(i - 0.5 * width, r["cached_sps"], f"{r['share']:.0%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [r["model"] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("series per second")
    ax.set_title(f"{rows[0]['n_series']} series, {CONTEXT} bars, {PRED_LEN} steps, {SAMPLES} paths "
                 "(% = cached fp32 / ceiling)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default=str(HERE.parent.parent / "shared" / "cn_data"))
    parser.add_argument("--n-series", type=int, default=300)
    parser.add_argument("--recompute-series", type=int, default=64, help="series the original algorithm samples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--save-greedy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            saves = {run: Path(tmp) / f"{model}-{run}.npy" for run, _, _ in RUNS}
            runs = {run: run_worker(args, model, run, saves[run]) for run, _, _ in RUNS}
            bound = run_worker(args, model, "ceiling", Path(tmp) / "unused")
            cached, full = np.load(saves["cached"]), np.load(saves["recompute"])
            cached = cached[:len(full)]
            rel = np.abs(cached - full) / np.maximum(np.abs(full), 1e-8)
            fp32, int8, recompute = runs["cached"], runs["cached int8"], runs["recompute"]
            rows.append({
                "model": model, "n_series": fp32["n_series"], "ceiling": bound,
                "cached_sps": fp32["sampled_sps"], "int8_sps": int8["sampled_sps"],
                "recompute_sps": recompute["sampled_sps"], "share": fp32["sampled_sps"] / bound["ceiling_sps"],
                "int8_share": int8["sampled_sps"] / bound["ceiling_sps"],
                "int8_speedup": int8["sampled_sps"] / fp32["sampled_sps"],
                "speedup": fp32["sampled_sps"] / recompute["sampled_sps"],
                "greedy_speedup": fp32["greedy_sps"] / recompute["greedy_sps"],
                "max_rel_diff": float(rel.max()), "runs": runs,
            })
    plot(rows, HERE / "sampling.png")
    lines = [
        "## Sampling speed (`benchmarks/bench_sampling.py`)", "",
        f"Workload: {rows[0]['n_series']} stocks on {DECISION_DATE} (`../shared/cn_data`: "
        f"{rows[0]['runs']['cached']['n_members']} CSI300 members with 90 traded bars, the rest other A-shares), "
        f"{CONTEXT}-bar daily context, {PRED_LEN} steps, {SAMPLES} sample paths each (T=1, top_p=0.9), "
        f"batches of {args.batch_size} series, CPU with {args.threads} threads, random weights, "
        f"Kronos-Tokenizer-base config (the CPU preset: its own tokenizer); the original algorithm on the first "
        f"{args.recompute_series} series. Machine: {machine()}.", "",
        "| model | fp32 ceiling: series/s | cached fp32: series/s (share of ceiling) | cached int8: series/s "
        "(share, vs fp32) | recompute: series/s | cached vs recompute (sampled / greedy) "
        "| peak RSS recompute / cached (MB) | greedy max rel. diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, f = r["runs"]["cached"], r["runs"]["recompute"]
        lines.append(
            f"| {r['model']} | {r['ceiling']['ceiling_sps']:.1f} | {r['cached_sps']:.1f} ({r['share']:.0%}) | "
            f"{r['int8_sps']:.1f} ({r['int8_share']:.0%}, {r['int8_speedup']:.2f}x) | {r['recompute_sps']:.2f} | "
            f"{r['speedup']:.1f}x / {r['greedy_speedup']:.1f}x | {f['peak_rss_mb']:.0f} / {c['peak_rss_mb']:.0f} | "
            f"{r['max_rel_diff']:.1e} |")
    lines += ["", "Ceiling tokens/s (encoder / predictor trunk / whole predictor / decoder, the best over batches of "
              "16, 64 and 320 windows): " + "; ".join(
                  f"{r['model']} " + " / ".join(f"{v:,.0f}" for v in r["ceiling"]["tokens_per_s"].values())
                  for r in rows) + ".", "",
              "Recompute is the original algorithm (`use_cache=False`): every context repeated per sample, "
              "the whole window re-run at each step. Peak RSS is the whole process (Python, torch, Qlib, data). "
              "Greedy max rel. diff compares all 6 columns of every greedy path, cached vs recompute, on the "
              "series both sampled. The ceiling counts decoding a token as costly as a token of a full-window "
              "forward, which a step-by-step sampler cannot quite reach (each step is a small batch of one "
              "position per path).", "",
              "![sampling speed](sampling.png)"]
    update_section("sampling", "\n".join(lines), BENCHMARKS)


if __name__ == "__main__":
    main()
