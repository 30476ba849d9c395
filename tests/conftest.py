"""Shared fixtures: the conformance checkpoints and vectors, and the real CSI300 data beside the repo."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
CN_DATA = SHARED / "cn_data"

torch.set_num_threads(2)

#: Fixtures that run the real qrun (several minutes each): every test using one is ``slow``, as are the notebooks
#: and the torchrun tests (marked where they are). ``python -m pytest -q -m "not slow" tests`` is the fast tier.
SLOW_FIXTURES = {"recorded", "rolled", "two_caches", "store"}
SLOW_MODULES = {"test_notebooks.py"}


def study(name: str, *args: str) -> list[str]:
    """The command line of a study of research/ (``python -m research.<name>``); run it with :func:`study_env`."""
    return [sys.executable, "-m", f"research.{name}", *args]


def study_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with the repository root on PYTHONPATH, where ``research`` is found from any
    working folder."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)

#: the members and benchmark of :func:`small_provider`
CODES = ("SH600000", "SH600004", "SH600009")
BENCHMARK = "SH000300"


def small_provider(folder: Path) -> Path:
    """A Qlib folder with three csi300 members and the benchmark: the calendar and instrument files copied
    (filtered), each feature file a link into the real (read-only) folder, so a test can damage any part."""
    (folder / "instruments").mkdir(parents=True)
    shutil.copytree(CN_DATA / "calendars", folder / "calendars")
    keep = {code.lower() for code in (*CODES, BENCHMARK)}
    for market in ("all", "csi300"):
        lines = (CN_DATA / "instruments" / f"{market}.txt").read_text().splitlines()
        rows = [line for line in lines if line.split("\t")[0].lower() in keep]
        (folder / "instruments" / f"{market}.txt").write_text("\n".join(rows) + "\n")
    for code in keep:
        (folder / "features" / code).mkdir(parents=True)
        for file in (CN_DATA / "features" / code).iterdir():
            (folder / "features" / code / file.name).symlink_to(file)
    return folder


def scale_closes(provider: Path, code: str, factor: float) -> None:
    """Rewrite one stock's close.day.bin (a link into the real folder) with its closes times ``factor``, as a
    re-adjusted or re-downloaded provider would."""
    path = provider / "features" / code.lower() / "close.day.bin"
    values = np.fromfile(path, dtype="<f4")
    path.unlink()
    np.concatenate([values[:1], values[1:] * factor]).astype("<f4").tofile(path)  # [0]: the first day's index


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
