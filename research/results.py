"""Each study owns one section of the findings page research/RESULTS.md, and each speed benchmark one of
benchmarks/RESULTS.md, between markers, and rewrites only that."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from kronos_qlib.files import atomic_write_text

REPO = Path(__file__).resolve().parent.parent
#: the studies' findings page, and the speed benchmarks' page
FINDINGS = REPO / "research" / "RESULTS.md"
BENCHMARKS = REPO / "benchmarks" / "RESULTS.md"
#: The variables the workflows read for their scale and dates: full-scale studies unset them, so that the
#: workflows' defaults (the cpu preset, 2010-2022) apply whatever the caller's shell holds.
SCALE_VARIABLES = ("KRONOS_PRESET", "TRAIN_START", "TRAIN_END", "VALID_START", "VALID_END", "TEST_START", "TEST_END",
                   "BACKTEST_END")
#: the first lines of each page, written when it does not exist yet
HEADERS = {FINDINGS: "# Research findings", BENCHMARKS: "# Benchmark results"}
RERUN = "\n\nEvery figure below was written by the script named in its section; rerun it to reproduce.\n"


def machine(commit: str | None = None) -> str:
    """This machine, and the commit of the code that ran: by default the one checked out when this process
    started (a commit made while a long benchmark runs is not the code it ran)."""
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, torch {torch.__version__}, "
            f"commit {commit or COMMIT_AT_START}")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPO, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


COMMIT_AT_START = git_commit()


def full_scale_environ() -> dict[str, str]:
    """This process's environment without :data:`SCALE_VARIABLES`."""
    return {k: v for k, v in os.environ.items() if k not in SCALE_VARIABLES}


def update_section(name: str, markdown: str, results: Path = FINDINGS) -> None:
    """Replace (or append) the section ``name`` of ``results`` (a study's: the findings page; a speed benchmark's:
    :data:`BENCHMARKS`), atomically, and print it."""
    text = results.read_text() if results.exists() else HEADERS.get(Path(results).resolve(), "# Results") + RERUN
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(results, text)
    print(block)


def require_choice(path: Path, script: str) -> Path:
    """``path``, the choice a study's ``choose`` phase recorded on valid; exit naming it when it is missing, so a
    ``test`` phase never reads test before the choice exists."""
    if not path.exists():
        sys.exit(f"{path} does not exist: run `{script} choose` first (the choice is made and recorded on valid "
                 f"before test is read)")
    return path
