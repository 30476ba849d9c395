"""scripts/forecast.py: one process or two under torchrun write the same forecast cache, qrun then samples
nothing, and concurrent writers of one day lose no forecast."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kronos_qlib.inference.forecast_cache import ForecastCache, read_day
from kronos_qlib.qrun import WORKFLOWS, run_qrun, smoke_env

from conftest import CN_DATA, REPO

WORKFLOW = WORKFLOWS / "kronos_csi300.yaml"


def forecast(cwd: Path, cache: Path, processes: int) -> str:
    env = {**os.environ, **smoke_env(), "QLIB_DATA": str(CN_DATA), "KRONOS_CACHE": str(cache),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    script = [str(REPO / "scripts" / "forecast.py"), "--workflow", str(WORKFLOW)]
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                       f"--nproc_per_node={processes}"]
    result = subprocess.run(launcher + script, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def day_files(cache: Path) -> dict[str, tuple]:
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    return {p.name: read_day(p) for p in sorted(folder.glob("*.npz"))}


@pytest.fixture(scope="module")
def two_caches(tmp_path_factory):
    """The smoke-scale test segment forecast by one process (which also trains the tiny model), then by two."""
    work = tmp_path_factory.mktemp("forecast")
    logs = {n: forecast(work, work / f"cache{n}", n) for n in (1, 2)}
    return work, logs


def test_two_processes_write_the_cache_one_writes(two_caches):
    work, logs = two_caches
    one, two = day_files(work / "cache1"), day_files(work / "cache2")
    assert len(one) > 10 and one.keys() == two.keys()
    for day in one:
        np.testing.assert_array_equal(one[day][0], two[day][0])
        np.testing.assert_array_equal(one[day][1], two[day][1])
        np.testing.assert_array_equal(one[day][2], two[day][2])
    assert "2 processes:" in logs[2] and " 0 already cached" in logs[2]
    assert [p.name for p in (work / "cache1").iterdir()] == [p.name for p in (work / "cache2").iterdir()]


def test_qrun_then_samples_nothing_and_a_rerun_resumes(two_caches):
    work, _ = two_caches
    cache = work / "cache2"
    folder = next(p for p in cache.iterdir() if p.is_dir())
    killed = sorted(folder.glob("*.npz"))[-3:]  # as if the run had been killed before its last days
    for path in killed:
        path.unlink()
    log = forecast(work, cache, 1)
    assert {p.name for p in killed} <= {p.name for p in folder.glob("*.npz")}
    sampled = int(log.split(" forecasts sampled")[0].rsplit(" ", 1)[-1])
    assert 0 < sampled == sum(len(read_day(folder / p.name)[0]) for p in killed)
    result = run_qrun(WORKFLOW, work, env={**smoke_env(), "QLIB_DATA": str(CN_DATA), "KRONOS_CACHE": str(cache)})
    assert "(0 sampled," in result.stdout + result.stderr


def _write_half(folder: str, names: list[str], start, out) -> None:
    cache = ForecastCache(folder, {"test": "concurrent"})
    start.wait(60)
    for name in names:  # one forecast per save: as many read-merge-write races as possible
        cache.save(pd.Timestamp("2020-01-02"), {name: (np.full((2, 3, 6), len(name), np.float32), 1.0)},
                   {name: "digest"})
    out.put(len(names))


def test_concurrent_writers_of_one_day_lose_nothing(tmp_path):
    names = [f"SH{600000 + i}" for i in range(80)]
    context = multiprocessing.get_context("spawn")
    out, start = context.Queue(), context.Barrier(2)
    workers = [context.Process(target=_write_half, args=(str(tmp_path), names[i::2], start, out)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [out.get(timeout=5) for _ in workers] == [40, 40]
    (day,) = list(next(tmp_path.iterdir()).glob("*.npz"))
    assert sorted(read_day(day)[0]) == sorted(names)
