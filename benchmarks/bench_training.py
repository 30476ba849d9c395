"""Training throughput: predictor-stage samples per second for the CPU preset, 1 process vs torchrun with 2.

A tokenizer is trained first (CPU preset, one short epoch) and frozen; then the predictor stage runs one epoch
of the same windows in one process (2 threads) and under `torchrun --standalone --nproc_per_node=2` (1 thread
each, gloo). Data: CSI300 of `../shared/cn_data`, default dates, 90 + 10-bar windows.

    python -m benchmarks.bench_training [--provider ../shared/cn_data] [--windows 8192]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from research.results import BENCHMARKS, machine, update_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def write_config(path: Path, provider: str, out: Path, windows: int, **extra) -> Path:
    config = {"preset": "cpu", "output_dir": str(out), "device": "cpu", "skip_existing": True,
              "data": {"provider_uri": provider, "cache_dir": str(REPO / ".cache" / "data")},
              "tokenizer_training": {"epochs": 1, "max_train_windows": windows, "max_valid_windows": 1024},
              "predictor_training": {"epochs": 1, "max_train_windows": windows, "max_valid_windows": 1024},
              **extra}
    path.write_text(yaml.safe_dump(config))
    return path


def run(cmd: list[str], env: dict | None = None) -> float:
    began = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    parser.add_argument("--windows", type=int, default=8192, help="training windows in the measured epoch")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer_cfg = write_config(tmp / "tok.yaml", args.provider, tmp / "tok", args.windows, train_basemodel=False)
        run([sys.executable, "scripts/train_sequential.py", "--config", str(tokenizer_cfg)])
        rows = {}
        for label, launcher, env in [
            ("1 process, 2 threads", [sys.executable], {"OMP_NUM_THREADS": "2"}),
            ("torchrun, 2 processes x 1 thread", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc_per_node=2"], {"OMP_NUM_THREADS": "1"}),
        ]:
            out = tmp / label.split(",")[0].replace(" ", "_")
            cfg = write_config(tmp / f"{out.name}.yaml", args.provider, out, args.windows, train_tokenizer=False,
                               pre_trained_tokenizer=str(tmp / "tok" / "tokenizer" / "best"))
            wall = run(launcher + ["scripts/train_predictor.py", "--config", str(cfg)], env)
            metrics = json.loads((out / "predictor" / "metrics.jsonl").read_text().splitlines()[-1])
            rows[label] = {"samples_per_s": metrics["samples_per_s"], "epoch_s": metrics["epoch_s"], "wall_s": wall,
                           "valid_loss": metrics["valid_loss"]}
            print(label, rows[label], flush=True)

    base = rows["1 process, 2 threads"]["samples_per_s"]
    lines = ["## Training throughput (`benchmarks/bench_training.py`)", "",
             f"Predictor stage of the `cpu` preset (d_model 128, 3 layers, 6+6-bit tokens; the tokenizer frozen), "
             f"one epoch of {args.windows} CSI300 windows of 90 + 10 bars, batch 64, on the CPU. "
             f"Machine: {machine()}.", "",
             "| launch | samples/s (training) | relative | epoch incl. validation (s) | process wall time (s) |",
             "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['samples_per_s']:.0f} | {r['samples_per_s'] / base:.2f}x | "
                     f"{r['epoch_s']:.1f} | {r['wall_s']:.1f} |")
    lines += ["", "samples/s counts training windows of all ranks over the training part of the epoch. With two "
              "cores, two gloo workers share the same cores that one process uses with two threads, so DDP here "
              "shows that the multi-process path works and what its overhead is, not a speed-up; on machines "
              "with a GPU or more cores per worker the ranks add throughput."]
    update_section("training", "\n".join(lines), BENCHMARKS)


if __name__ == "__main__":
    main()
