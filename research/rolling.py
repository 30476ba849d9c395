"""Rolling retraining in full beside the single fit: `qrun workflows/kronos_csi300.yaml` and then
`scripts/rolling.py --step 60` on the same workflow (CPU preset, default dates: 13 rolls over the 2020-2022 test
segment), both in the folder --work; wall times, refit times and both runs' signal and backtest metrics go to
research/RESULTS.md.

They share one folder as a user would run them: roll 0 has the single fit's segments, so it reuses its stage
folders and its forecasts, and the rolling wall time is what rolling costs on top of a single fit. --stages names
the finished stage folder of an earlier full run of the same workflow (its runs/<name>, copied into --work) to skip
training in the single fit too; RESULTS.md then says so.

    python -m research.rolling [--provider ../shared/cn_data] [--work outputs/rolling_run] [--step 60]
    python -m research.rolling --dry-run      # the rolls it would train, and nothing else
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kronos_qlib.evaluation import comparison_table, format_table, init_recorder_store, load_run
from kronos_qlib.qrun import run_qrun

from research.results import full_scale_environ, machine, update_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

def rolling(args: argparse.Namespace, cwd: Path, env: dict[str, str], *extra: str, log: Path | None = None
            ) -> subprocess.CompletedProcess:
    """scripts/rolling.py in ``cwd``; its output goes to ``log`` as it runs (a long job to follow), else captured."""
    command = [sys.executable, str(REPO / "scripts" / "rolling.py"), "--step", str(args.step), *extra]
    if args.refit_epochs:
        command += ["--refit-epochs", str(args.refit_epochs)]
    if log is None:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    with open(log, "w") as out:
        return subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)


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
    parser.add_argument("--stages", default=None,
                        help="finished stage folder of an earlier full run of the workflow (runs/<name>) to reuse")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.step < 1 or args.refit_epochs < 0:
        parser.error("--step must be at least 1 and --refit-epochs at least 0")
    work = Path(args.work).resolve()
    base = full_scale_environ()
    base["QLIB_DATA"] = str(Path(args.provider).resolve())

    if args.dry_run:  # in a scratch folder: Qlib's start-up may create an MLflow store where it runs
        with tempfile.TemporaryDirectory() as scratch:
            result = rolling(args, Path(scratch), base, "--dry-run")
        print(result.stdout or result.stderr[-3000:])
        sys.exit(result.returncode)
    if work.exists() and any(work.iterdir()):
        sys.exit(f"{work} holds an earlier run: move it away (it is not deleted for you) or pass another --work")

    walls = {}
    env = {**base, "KRONOS_CACHE": str(work / "forecasts")}
    work.mkdir(parents=True, exist_ok=True)
    if args.stages:
        stages = Path(args.stages).resolve()
        shutil.copytree(stages, work / "runs" / stages.name)
    print("qrun kronos_csi300.yaml ...", flush=True)
    began = time.perf_counter()
    result = run_qrun("kronos_csi300.yaml", cwd=work, env=env)
    walls["single fit (qrun workflows/kronos_csi300.yaml)"] = time.perf_counter() - began
    (work / "qrun.log").write_text(result.stdout + result.stderr)
    print(f"scripts/rolling.py --step {args.step} ...", flush=True)
    began = time.perf_counter()
    log = work / "rolling.log"
    result = rolling(args, work, env, log=log)
    walls[f"rolling, step {args.step} (scripts/rolling.py, after the single fit)"] = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"scripts/rolling.py failed ({result.returncode}):\n{log.read_text()[-6000:]}")
    print(log.read_text().splitlines()[-1], flush=True)

    init_recorder_store(f"sqlite:///{work / 'mlruns.db'}", args.provider)
    runs = [load_run(name) for name in ("kronos_csi300", "kronos_csi300_rolling")]
    refits = refit_minutes(work)
    epochs = f"{args.refit_epochs} predictor epoch(s)" if args.refit_epochs else "the workflow's predictor epochs"
    lines = [
        "## Rolling retraining (`python -m research.rolling`)", "",
        f"`python scripts/rolling.py --step {args.step}` on `workflows/kronos_csi300.yaml` (cpu preset, default "
        "dates): Qlib's `RollingGen` (sliding) rolls train/valid/test forward every "
        f"{args.step} trading days over the test segment 2020-01-01..2022-12-30; roll 0 trains like the single fit, "
        f"each later roll finetunes the previous roll's weights ({epochs}, predictor stage only) on its own "
        "segments; the rolls' test signals merged by `RollingGroup` and backtested with the workflow's TopkDropout "
        "50/5 and costs. Beside it, the single fit (`qrun workflows/kronos_csi300.yaml`), run first in the same "
        "folder: roll 0 shares its segments, so it reuses its trained stages and forecasts, and the rolling wall "
        "time is the cost on top of a single fit"
        + (" (the single fit itself reused the finished stages of an earlier full run of the workflow, so its wall "
           "time is forecasting and backtest only)" if args.stages else "")
        + f"; on `../shared/cn_data`. Machine: {machine()}.", "",
        "| run | wall time |", "|---|---|", *[f"| {name} | {wall / 60:.1f} min |" for name, wall in walls.items()], "",
        f"{len(refits) + 1} rolls; the {len(refits)} refits took {sum(refits):.1f} min of predictor training in all "
        f"({min(refits, default=0):.1f} to {max(refits, default=0):.1f} min each).", "",
        format_table(comparison_table(runs)),
    ]
    update_section("rolling", "\n".join(lines))


if __name__ == "__main__":
    main()
