"""Rolling retraining in full beside the single fit: `scripts/rolling.py --step 60` on the shipped Kronos workflow
(CPU preset, default dates: 13 rolls over the 2020-2022 test segment) and `qrun workflows/kronos_csi300.yaml`; wall
times, refit times and both runs' signal and backtest metrics go to benchmarks/RESULTS.md.

Each runs in its own fresh subfolder of --work (mlruns.db, runs/, the forecast cache), so the rolling run trains
its first roll from scratch too and nothing is shared between the two. --single names the folder of a finished
single-fit run instead (e.g. outputs/full_run from bench_workflows.py, same code and data) to skip that qrun.

    python benchmarks/bench_rolling.py [--provider ../shared/cn_data] [--work outputs/rolling_run] [--step 60]
    python benchmarks/bench_rolling.py --dry-run      # the rolls it would train, and nothing else
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from results import machine, update_section  # noqa: E402

from kronos_qlib.evaluation import comparison_table, format_table, init_recorder_store, load_run  # noqa: E402
from kronos_qlib.qrun import run_qrun  # noqa: E402

#: the variables the workflow reads for its scale and dates: unset, so that its defaults (cpu, 2010-2022) apply
SCALE_VARIABLES = ["KRONOS_PRESET", "TRAIN_START", "TRAIN_END", "VALID_START", "VALID_END", "TEST_START", "TEST_END",
                   "BACKTEST_END"]


def rolling(args: argparse.Namespace, cwd: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "scripts" / "rolling.py"), "--step", str(args.step), *extra]
    if args.refit_epochs:
        command += ["--refit-epochs", str(args.refit_epochs)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


def refit_minutes(folder: Path) -> list[float]:
    """Minutes of each later roll's predictor refit, from its stage folder's metrics.jsonl."""
    rolls = sorted(folder.glob("runs/*_rolling*/roll*/predictor/metrics.jsonl"),
                   key=lambda p: int(p.parts[-3].split("_")[0][len("roll"):]))
    return [sum(json.loads(line)["epoch_s"] for line in path.read_text().splitlines()) / 60 for path in rolls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    parser.add_argument("--work", default=str(REPO / "outputs" / "rolling_run"))
    parser.add_argument("--step", type=int, default=60)
    parser.add_argument("--refit-epochs", type=int, default=2,
                        help="predictor epochs of each refit (0: the workflow's, 6 for the cpu preset)")
    parser.add_argument("--single", default=None, help="folder of a finished single-fit qrun run to compare with")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.step < 1 or args.refit_epochs < 0:
        parser.error("--step must be at least 1 and --refit-epochs at least 0")
    work = Path(args.work).resolve()
    base = {k: v for k, v in os.environ.items() if k not in SCALE_VARIABLES}
    base["QLIB_DATA"] = str(Path(args.provider).resolve())

    if args.dry_run:  # in a scratch folder: Qlib's start-up may create an MLflow store where it runs
        with tempfile.TemporaryDirectory() as scratch:
            result = rolling(args, Path(scratch), base, "--dry-run")
        print(result.stdout or result.stderr[-3000:])
        sys.exit(result.returncode)
    if work.exists() and any(work.iterdir()):
        sys.exit(f"{work} holds an earlier run: move it away (it is not deleted for you) or pass another --work")

    walls = {}
    single = Path(args.single).resolve() if args.single else work / "single"
    if args.single is None:
        single.mkdir(parents=True)
        print("qrun kronos_csi300.yaml ...", flush=True)
        began = time.perf_counter()
        result = run_qrun("kronos_csi300.yaml", cwd=single, env={**base, "KRONOS_CACHE": str(single / "forecasts")})
        walls["single fit (qrun workflows/kronos_csi300.yaml)"] = time.perf_counter() - began
        (single / "qrun.log").write_text(result.stdout + result.stderr)
    folder = work / "rolling"
    folder.mkdir(parents=True)
    print(f"scripts/rolling.py --step {args.step} ...", flush=True)
    began = time.perf_counter()
    result = rolling(args, folder, {**base, "KRONOS_CACHE": str(folder / "forecasts")})
    walls[f"rolling, step {args.step} (scripts/rolling.py)"] = time.perf_counter() - began
    (folder / "rolling.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"scripts/rolling.py failed ({result.returncode}):\n{result.stderr[-6000:]}")
    print(result.stdout, flush=True)

    runs = []
    for name, where in (("kronos_csi300", single), ("kronos_csi300_rolling", folder)):
        init_recorder_store(f"sqlite:///{where / 'mlruns.db'}", args.provider)
        runs.append(load_run(name))
    refits = refit_minutes(folder)
    epochs = f"{args.refit_epochs} predictor epoch(s)" if args.refit_epochs else "the workflow's predictor epochs"
    lines = [
        "## Rolling retraining (`benchmarks/bench_rolling.py`)", "",
        f"`python scripts/rolling.py --step {args.step}` on `workflows/kronos_csi300.yaml` (cpu preset, default "
        "dates): Qlib's `RollingGen` (sliding) rolls train/valid/test forward every "
        f"{args.step} trading days over the test segment 2020-01-01..2022-12-30; roll 0 trains like the single fit, "
        f"each later roll finetunes the previous roll's weights ({epochs}, predictor stage only) on its own "
        "segments; the rolls' test signals merged by `RollingGroup` and backtested with the workflow's TopkDropout "
        "50/5 and costs. Beside it, the single fit (`qrun workflows/kronos_csi300.yaml`"
        + (f", recorded in {single}" if args.single else ", run here in its own folder; both from scratch")
        + f") on `../shared/cn_data`. Machine: {machine()}.", "",
        "| run | wall time |", "|---|---|", *[f"| {name} | {wall / 60:.1f} min |" for name, wall in walls.items()], "",
        f"{len(refits) + 1} rolls; the {len(refits)} refits took {sum(refits):.1f} min of predictor training in all "
        f"({min(refits, default=0):.1f} to {max(refits, default=0):.1f} min each).", "",
        format_table(comparison_table(runs)),
    ]
    update_section("rolling", "\n".join(lines))


if __name__ == "__main__":
    main()
