"""The GPU checks' parts that run anywhere: the Qlib-free torchrun finetune (on gloo here), and the check's answer
on a machine without CUDA."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_finetune_trains_under_torchrun_without_qlib(tmp_path):
    """Two ranks train the tiny preset's predictor on synthetic windows through SequentialTrainer and report."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "benchmarks.gpu_finetune", "--preset", "tiny", "--steps", "3", "--device", "cpu",
                             "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on cpu, 2 ranks (gloo): 3 steps of 16 windows per rank" in result.stdout
    assert (tmp_path / "predictor" / "done.json").is_file()
    assert (tmp_path / "predictor" / "best" / "model.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the checks themselves")
def test_gpu_check_says_it_ran_nothing_without_cuda():
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "no CUDA device: the GPU checks were not run" in result.stdout
