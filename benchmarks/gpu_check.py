"""The GPU checks, in minutes and without Qlib: conformance of the tiny checkpoints on CUDA, then sampling speed
of the Kronos-small config (random weights of the released layout) in fp32 and bf16, each as a share of the fp32
ceiling measured the same way as on the CPU (bench_sampling's: batched full-window forwards of each network), then
a torchrun finetune of the `small` preset's predictor on every GPU of the machine (NCCL, bf16 autocast, DDP; random
weights of the released layout on synthetic windows: benchmarks/gpu_finetune.py) and its throughput.

    python -m benchmarks.gpu_check [--n-series 512] [--batch-size 256] [--finetune-steps 300]

Exits 0 saying so where no CUDA device is present. The forecasting stage of a backtest needs Qlib data, which a
bare GPU machine lacks: the sampler is measured on arrays, as that stage feeds it.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_sampling import CONTEXT, PRED_LEN, SAMPLES, ceiling, networks

REPO = Path(__file__).resolve().parent.parent
CONFORMANCE = REPO.parent / "shared" / "conformance"


def conformance(device: torch.device, folder: Path) -> None:
    """Tokens exactly, reconstructions within the conformance tolerance (1e-4), on ``device``."""
    from kronos_qlib import KronosTokenizer

    vectors = np.load(folder / "vectors.npz")
    tokenizer = KronosTokenizer.from_pretrained(folder / "tokenizer-tiny", map_location=device)
    with torch.no_grad():
        s1, s2 = tokenizer.encode(torch.from_numpy(vectors["tok_x"]).to(device), half=True)
        decoded = tokenizer.decode((s1, s2), half=True).cpu().numpy()
    np.testing.assert_array_equal(s1.cpu().numpy(), vectors["tok_s1"])
    np.testing.assert_array_equal(s2.cpu().numpy(), vectors["tok_s2"])
    np.testing.assert_allclose(decoded, vectors["tok_decode_half"], atol=1e-4, rtol=1e-4)
    print(f"conformance on {device}: tokens exact, decode within 1e-4")


def random_bars(n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Random-walk OHLCV bars and their time features (speed does not depend on the values)."""
    rng = np.random.default_rng(0)
    close = 10 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, length)), axis=1))
    bars = np.stack([close, close * 1.01, close * 0.99, close, rng.uniform(1e5, 1e6, (n, length)),
                     close * 1e5], axis=-1).astype(np.float32)
    stamps = np.zeros((n, length, 5), dtype=np.float32)
    return bars, stamps


def sampling_speed(device: torch.device, precision: str, n_series: int, batch_size: int) -> float:
    """Series per second of the cached sampler (5 paths, 10 steps, 90 bars), after one warm-up batch."""
    from kronos_qlib import KronosPredictor, Sampling

    tokenizer, model = networks("Kronos-small")
    predictor = KronosPredictor(model, tokenizer, device=device, batch_size=batch_size, precision=precision)
    bars, stamps = random_bars(n_series, CONTEXT + PRED_LEN)
    x, x_stamp, y_stamp = bars[:, :CONTEXT], stamps[:, :CONTEXT], stamps[:, CONTEXT:]
    sampling = Sampling(sample_count=SAMPLES)
    predictor.predict_paths_from_arrays(x[:batch_size], x_stamp[:batch_size], y_stamp[:batch_size], sampling)
    torch.cuda.synchronize(device)
    began = time.perf_counter()
    predictor.predict_paths_from_arrays(x, x_stamp, y_stamp, sampling)
    torch.cuda.synchronize(device)
    return n_series / (time.perf_counter() - began)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-series", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--conformance", type=Path, default=CONFORMANCE, help="folder of the tiny checkpoints")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: the GPU checks were not run")
        return 0
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    conformance(device, args.conformance)
    bound = ceiling(*networks("Kronos-small"), rows=(64, 320, 1280), device="cuda")
    print("Kronos-small fp32 ceiling: {:.1f} series/s (tokens/s {})".format(
        bound["ceiling_sps"], ", ".join(f"{k} {v:,.0f}" for k, v in bound["tokens_per_s"].items())))
    for precision in ("fp32", "bf16"):
        speed = sampling_speed(device, precision, args.n_series, args.batch_size)
        print(f"Kronos-small {precision}: {speed:.1f} series/s, {speed / bound['ceiling_sps']:.0%} of the fp32 "
              f"ceiling ({args.n_series} series, batches of {args.batch_size})")
    ranks = torch.cuda.device_count()
    finetune = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                "-m", "benchmarks.gpu_finetune", "--steps", str(args.finetune_steps)]
    return subprocess.run(finetune, cwd=REPO).returncode


if __name__ == "__main__":
    sys.exit(main())
