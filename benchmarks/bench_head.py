"""The return head's scoring against 5-path sampling: stock-days per second on the same contexts and weights.

Both run what ``KronosModel.predict`` runs for its signal: ``score_contexts`` (one forward pass of tokenizer
encoder and predictor per context, batches of 256) for ``signal: head``, and the cached sampler
(``predict_paths_from_arrays``, 5 paths, 10 steps, T=1.2, top_p=1.0, batches of 64) for the path signals; 90-bar
contexts, fp32, ``--threads`` threads. Weights: the path workflow's finetuned CPU-preset checkpoints when they are
in runs/, else random weights of the same configs (speed does not depend on the weights).

    python -m benchmarks.bench_head [--series 1024] [--threads 2]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from research.results import BENCHMARKS, machine, update_section

HERE = Path(__file__).resolve().parent

RUN = HERE.parent / "runs" / "kronos_csi300_cpu_2010-01-01_2019-12-31_seed42"
LOOKBACK, PRED_LEN = 90, 10


def networks():
    from kronos_qlib import Kronos, KronosTokenizer
    from kronos_qlib.training import config_from_dict

    if (RUN / "predictor" / "best" / "model.safetensors").is_file():
        return (KronosTokenizer.from_pretrained(RUN / "tokenizer" / "best"),
                Kronos.from_pretrained(RUN / "predictor" / "best"), "finetuned CPU preset (runs/)")
    config = config_from_dict({"preset": "cpu"})
    torch.manual_seed(0)
    return KronosTokenizer(**config.tokenizer_config), Kronos(**config.predictor_config), "CPU preset, random"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from kronos_qlib.data import BarPanel
    from kronos_qlib.features import BAR_COLUMNS, time_features
    from kronos_qlib.inference import KronosPredictor, Sampling
    from kronos_qlib.inference.head import score_contexts
    from kronos_qlib.model import ReturnHead

    tokenizer, predictor, weights = networks()
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2020-01-01", periods=LOOKBACK)
    close = 10 * np.exp(np.cumsum(rng.normal(0, 0.02, (args.series, LOOKBACK)), axis=1))
    bars = np.stack([close, close * 1.01, close * 0.99, close, rng.uniform(1e5, 2e5, close.shape),
                     close * 1e5], axis=-1)
    frame = pd.DataFrame(bars.reshape(-1, 6), columns=list(BAR_COLUMNS), index=pd.MultiIndex.from_product(
        [[f"S{i:04d}" for i in range(args.series)], dates], names=["instrument", "datetime"]))
    panel = BarPanel.from_frame(frame)
    starts = panel.offsets[:-1].astype(np.int64)
    head = ReturnHead(predictor.d_model, hidden=64)
    began = time.perf_counter()
    score_contexts(tokenizer, predictor, head, panel, starts, LOOKBACK, 5.0, batch_size=256)
    head_rate = args.series / (time.perf_counter() - began)
    sampler = KronosPredictor(predictor, tokenizer, device="cpu", batch_size=64, precision="fp32")
    x_stamp = np.broadcast_to(time_features(dates), (args.series, LOOKBACK, 5))
    y_stamp = np.broadcast_to(time_features(pd.bdate_range(dates[-1], periods=PRED_LEN + 1)[1:]),
                              (args.series, PRED_LEN, 5))
    began = time.perf_counter()
    sampler.predict_paths_from_arrays(bars, x_stamp, y_stamp, Sampling(T=1.2, top_p=1.0, sample_count=5, seed=0))
    path_rate = args.series / (time.perf_counter() - began)
    update_section("head_speed", "\n".join([
        "## Return head against path sampling (`benchmarks/bench_head.py`)", "",
        f"{machine()}; {args.threads} threads, fp32, {args.series} contexts of {LOOKBACK} bars, weights: {weights}.",
        "", "| signal | stock-days/s | relative |", "|---|---|---|",
        f"| head (one forward pass, batches of 256) | {head_rate:.0f} | {head_rate / path_rate:.2f}x |",
        f"| paths (5 paths x {PRED_LEN} steps, cached sampler, batches of 64) | {path_rate:.0f} | 1.00x |", "",
        "The sampler shares each context's prefill (tokenizer encode and the predictor over the context) across "
        "its paths; the head pays that prefill too and saves the decode steps and the tokenizer decode."]), BENCHMARKS)


if __name__ == "__main__":
    main()
