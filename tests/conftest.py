"""Shared fixtures: the conformance checkpoints and vectors, and the real CSI300 data beside the repo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
CN_DATA = SHARED / "cn_data"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def vectors() -> dict[str, np.ndarray]:
    with np.load(CONFORMANCE / "vectors.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return CONFORMANCE / "tokenizer-tiny"


@pytest.fixture(scope="session")
def predictor_dir() -> Path:
    return CONFORMANCE / "predictor-tiny"


@pytest.fixture()
def tokenizer(tokenizer_dir):
    from kronos_qlib import KronosTokenizer
    return KronosTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture()
def predictor(predictor_dir):
    from kronos_qlib import Kronos
    return Kronos.from_pretrained(predictor_dir)
