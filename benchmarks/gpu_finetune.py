"""A torchrun finetune without Qlib, for the GPU checks: the predictor stage of a preset (by default `small`:
Kronos-small on the Kronos-Tokenizer-base tokenizer) on random weights of the released layout, for --steps
optimizer steps of synthetic random-walk windows, through the library's own SequentialTrainer. So torchrun, the
process group (NCCL on CUDA, gloo on the CPU), bf16 autocast and DDP run together as a user's finetune runs them,
on a machine with neither Qlib data nor the Hub; rank 0 prints the training throughput.

    torchrun --standalone --nproc_per_node=N -m benchmarks.gpu_finetune [--steps 300] [--preset small]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch.distributed as dist

from benchmarks.gpu_check import random_bars
from kronos_qlib import KronosTokenizer
from kronos_qlib.data import BarPanel, WindowDataset, window_starts
from kronos_qlib.features import BAR_COLUMNS
from kronos_qlib.training import config_from_dict
from kronos_qlib.training.distributed import setup, teardown
from kronos_qlib.training.sequential import SequentialTrainer

#: the synthetic panel: enough windows that no window repeats within a few hundred steps of the preset's batch
INSTRUMENTS, DAYS, VALID_DAYS = 64, 1000, 100


def synthetic_windows(spec) -> dict[str, WindowDataset]:
    """Train and valid windows over random walks on business days (the last VALID_DAYS days are valid)."""
    bars, _ = random_bars(INSTRUMENTS, DAYS)
    dates = pd.bdate_range("2015-01-05", periods=DAYS)
    index = pd.MultiIndex.from_product([[f"S{i:03d}" for i in range(INSTRUMENTS)], dates],
                                       names=["instrument", "datetime"])
    panel = BarPanel.from_frame(pd.DataFrame(bars.reshape(-1, len(BAR_COLUMNS)), index=index, columns=BAR_COLUMNS))
    split = dates[-VALID_DAYS]
    return {"train": WindowDataset(panel, window_starts(panel, spec, dates[0], split - pd.Timedelta(days=1)), spec),
            "valid": WindowDataset(panel, window_starts(panel, spec, split, dates[-1]), spec)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of the one epoch")
    parser.add_argument("--device", default=None, help="default: CUDA when present")
    parser.add_argument("--out", type=Path, default=None, help="output_dir (default: a temporary folder)")
    args = parser.parse_args(argv)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    # one folder for every rank of the run (torchrun names the run), removed at the end unless given
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", os.getpid())
    out = args.out or Path(tempfile.gettempdir()) / f"kronos-gpu-finetune-{run_id}"
    tokenizer_folder = out / "random-tokenizer"
    batch = config_from_dict({"preset": args.preset}).predictor_training.batch_size
    config = config_from_dict({
        "preset": args.preset, "output_dir": str(out), "device": args.device, "train_tokenizer": False,
        "pre_trained_tokenizer": str(tokenizer_folder), "pre_trained_predictor": False,
        "predictor_training": {"epochs": 1, "max_train_windows": args.steps * batch * world,
                               "max_valid_windows": 4 * batch * world}})
    runtime = setup(config.device)
    if runtime.is_main:
        KronosTokenizer(**config.tokenizer_config).save_pretrained(tokenizer_folder)
    runtime.barrier()
    SequentialTrainer(config, runtime, datasets=synthetic_windows(config.forecast)).run(("predictor",))
    if runtime.is_main:
        last = json.loads((out / "predictor" / "metrics.jsonl").read_text().splitlines()[-1])
        ranks = f"{world} ranks ({dist.get_backend()})" if dist.is_initialized() else "one process"
        print(f"finetune of the {args.preset} preset's predictor (random weights of its configs) on "
              f"{runtime.device.type}, {ranks}: {args.steps} steps of {batch} windows per rank, "
              f"{last['samples_per_s']:.0f} windows/s, epoch {last['epoch_s']:.1f} s, valid loss "
              f"{last['valid_loss']:.3f}", flush=True)
    runtime.barrier()
    if runtime.is_main and args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    teardown()


if __name__ == "__main__":
    main()
