"""Both workflows in full: `qrun workflows/kronos_csi300.yaml` (CPU preset) and `qrun workflows/lightgbm_csi300.yaml`
on the default dates, then `scripts/compare.py`; wall times, the table and the plot go to research/RESULTS.md.

The shipped files run as they are, through qrun, with only QLIB_DATA and KRONOS_CACHE set. They run in a fresh
folder (default outputs/full_run, holding mlruns.db, mlruns/, runs/ and the forecast cache), so nothing is reused
from an earlier run: training, forecasting and backtests all happen inside the timing.

    python -m research.workflows [--provider ../shared/cn_data] [--work outputs/full_run]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from kronos_qlib.qrun import WORKFLOWS, load_workflow, run_qrun
from kronos_qlib.training.config import PRESETS

from research.results import machine, update_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    parser.add_argument("--work", default=str(REPO / "outputs" / "full_run"))
    args = parser.parse_args()
    work = Path(args.work).resolve()
    if work.exists() and any(work.iterdir()):
        sys.exit(f"{work} holds an earlier run: move it away (it is not deleted for you) or pass another --work")
    work.mkdir(parents=True, exist_ok=True)

    walls = {}
    # every output of the runs stays in the work folder, the forecast cache included
    env = {"QLIB_DATA": str(Path(args.provider).resolve()), "KRONOS_CACHE": str(work / "forecasts")}
    for name in ("kronos_csi300.yaml", "lightgbm_csi300.yaml"):
        print(f"qrun {name} ...", flush=True)
        began = time.perf_counter()
        result = run_qrun(name, cwd=work, env=env)
        walls[name] = time.perf_counter() - began
        (work / f"{name}.log").write_text(result.stdout + result.stderr)
        print(f"  {walls[name] / 60:.1f} min", flush=True)

    compare = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "--mlflow-uri",
                              f"sqlite:///{work / 'mlruns.db'}", "--out", str(work / "compare")],
                             capture_output=True, text=True, check=True)
    print(compare.stdout)
    shutil.copy(work / "compare" / "cumulative_excess.png", HERE / "workflows_cumulative_excess.png")

    training = {}
    checkpoints = work / load_workflow(WORKFLOWS / "kronos_csi300.yaml", env)["task"]["model"]["kwargs"]["finetune"][
        "output_dir"]
    for stage in ("tokenizer", "predictor"):
        rows = [json.loads(line) for line in (checkpoints / stage / "metrics.jsonl").read_text().splitlines()]
        training[stage] = (sum(r["epoch_s"] for r in rows), len(rows), rows[-1])
    tok, pred = training["tokenizer"], training["predictor"]
    bits = PRESETS["cpu"]["predictor_config"]
    uniform = (math.log(2 ** bits["s1_bits"]) + math.log(2 ** bits["s2_bits"])) / 2  # mean CE of a uniform guess
    lines = [
        "## Workflows in full (`python -m research.workflows`)", "",
        "`qrun workflows/kronos_csi300.yaml` with the `cpu` preset and `qrun workflows/lightgbm_csi300.yaml`, "
        "both on the default dates (train 2010-2017, valid 2018-2019, test 2020-01-01..2022-12-30, backtest "
        "2020-01-02..2022-12-29, TopkDropout 50/5 against SH000300 with Qlib's benchmark costs), on "
        f"`../shared/cn_data`, from scratch. Machine: {machine()}.", "",
        "| workflow | wall time |", "|---|---|",
        *[f"| {name} | {walls[name] / 60:.1f} min |" for name in walls], "",
        f"Inside the Kronos run: tokenizer {tok[1]} epochs in {tok[0] / 60:.1f} min (final valid reconstruction MSE "
        f"{tok[2]['valid_recon']:.3f} on normalized bars), predictor {pred[1]} epochs in {pred[0] / 60:.1f} min "
        f"(final valid cross-entropy {pred[2]['valid_loss']:.3f}; s1 {pred[2]['valid_s1']:.3f}, "
        f"s2 {pred[2]['valid_s2']:.3f}; a uniform guess over the {2 ** bits['s1_bits']} + {2 ** bits['s2_bits']}-token "
        f"vocabularies scores {uniform:.3f}); the rest "
        "is loading, forecasting every member every test day (5 paths, 10 steps) and the backtest.", "",
        compare.stdout.split("\nwritten:")[0].strip(), "",
        "![cumulative excess return](workflows_cumulative_excess.png)",
    ]
    update_section("workflows", "\n".join(lines))


if __name__ == "__main__":
    main()
