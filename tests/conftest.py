"""Shared fixtures: the conformance checkpoints and vectors, and the real CSI300 data beside the repo."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kronos_qlib.qrun import FACTOR_SMOKE_ENV, GRU_SMOKE_ENV, run_qrun, smoke_env

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
CN_DATA = SHARED / "cn_data"

torch.set_num_threads(2)

#: Fixtures that run the real qrun (several minutes each): every test using one is ``slow``, as are the notebooks
#: and the torchrun tests (marked where they are). ``python -m pytest -q -m "not slow" tests`` is the fast tier.
SLOW_FIXTURES = {"recorded", "rolled", "two_caches"}
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

#: The workflows the shared smoke runs (:func:`recorded`) put through qrun, in this order, then the factor one
QRUN_WORKFLOWS = ["kronos_csi300.yaml", "lightgbm_csi300.yaml", "gru_alpha360_csi300.yaml"]
FACTOR_WORKFLOW = "kronos_lightgbm_csi300.yaml"
HEAD_WORKFLOW = "kronos_head_csi300.yaml"
#: The factor workflow at the smoke scale (the README's command): Kronos trained on 2016-01..05, LightGBM on
#: 2016-06..08 and validated on September, the smoke test dates after; two paths per stock and day.
FACTOR_SMOKE = smoke_env(FACTOR_SMOKE_ENV)
#: GRU at the smoke scale: one epoch
GRU_SMOKE = smoke_env(GRU_SMOKE_ENV)


@pytest.fixture(scope="session")
def recorded(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The shipped workflows through qrun at the smoke scale, once per test session for every module that reads
    them, then the Kronos and head ones again (reusing what the first made): (their folder with mlruns.db, each
    run's output). Tests that record more runs there give them their own experiment names."""
    tmp = tmp_path_factory.mktemp("workflows")
    env = {**smoke_env(), "QLIB_DATA": str(CN_DATA), "KRONOS_CACHE": str(tmp / "forecasts")}
    logs = {name: run_qrun(name, cwd=tmp, env={**env, **GRU_SMOKE}, timeout=1200) for name in QRUN_WORKFLOWS}
    logs[FACTOR_WORKFLOW] = run_qrun(FACTOR_WORKFLOW, cwd=tmp, env={**env, **FACTOR_SMOKE}, timeout=1200)
    logs["again"] = run_qrun("kronos_csi300.yaml", cwd=tmp, env=env, timeout=1200)
    logs[HEAD_WORKFLOW] = run_qrun(HEAD_WORKFLOW, cwd=tmp, env=env, timeout=1200)
    logs["head again"] = run_qrun(HEAD_WORKFLOW, cwd=tmp, env=env, timeout=1200)
    return tmp, {name: result.stdout + result.stderr for name, result in logs.items()}


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
def fake_hub(monkeypatch):
    """``fake_hub(download)`` answers every ``hf_hub_download`` with ``download``, the library's and that of the
    Hub mixin it builds on (the Hub is not reachable in tests)."""
    import huggingface_hub.hub_mixin

    import kronos_qlib.model.hub as hub

    def install(download) -> None:
        for module in (hub, huggingface_hub.hub_mixin):
            monkeypatch.setattr(module, "hf_hub_download", download)
    return install


@pytest.fixture()
def tokenizer(tokenizer_dir):
    from kronos_qlib import KronosTokenizer
    return KronosTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture()
def predictor(predictor_dir):
    from kronos_qlib import Kronos
    return Kronos.from_pretrained(predictor_dir)
