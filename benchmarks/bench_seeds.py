"""Results over seeds, in Qlib's benchmark format: each workflow run with several seeds at full scale (CPU preset,
default dates), every metric reported as mean +- std across seeds in benchmarks/RESULTS.md, with the wall times.

Seed k runs, in its own folder --work/seed<k> (mlruns.db, runs/), with SEED=42+k (Kronos's training seed and
LightGBM's) and SAMPLE_SEED=k (Kronos's sampling seed), so seed 0 is the shipped default:

1. `qrun workflows/kronos_csi300.yaml`
2. `qrun workflows/lightgbm_csi300.yaml`
3. `python scripts/ensemble.py`: the two combined, the Kronos weight chosen on the valid segment
4. `qrun workflows/kronos_lightgbm_csi300.yaml`: LightGBM on Alpha158 plus Kronos factors (samples every day from
   2015 on: the longest step by far)

and then the metrics of the runs, Kronos's rank correlation with LightGBM and its residual IC after removing
LightGBM's score. --steps runs a subset (the same for every seed). A step that finished is not run again (its `<step>.json` holds its wall time), so a killed
benchmark continues where it stopped; the forecast cache (--cache) is shared, as its files are keyed by model,
sampling settings and seed.

    python benchmarks/bench_seeds.py [--seeds 3] [--provider ../shared/cn_data] [--work outputs/seeds]
    python benchmarks/bench_seeds.py --stages outputs/full_run/runs/<name> --cache outputs/full_run/forecasts
        # seed 0 reuses a finished full run of the default workflow (its stage folder is copied)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from results import full_scale_environ, machine, update_section  # noqa: E402

from kronos_qlib.evaluation import (init_recorder_store, load_run, residual_ic, signal_correlation,  # noqa: E402
                                    summarize)
from kronos_qlib.files import atomic_write_text  # noqa: E402
from kronos_qlib.qrun import WORKFLOWS, load_workflow, qrun_command  # noqa: E402

#: each step's experiment, where the step records its run
RUNS = {"kronos": "kronos_csi300", "lightgbm": "lightgbm_csi300", "ensemble": "ensemble_csi300",
        "factors": "kronos_lightgbm_csi300"}
STEPS = {
    "kronos": qrun_command() + [str(WORKFLOWS / "kronos_csi300.yaml")],
    "lightgbm": qrun_command() + [str(WORKFLOWS / "lightgbm_csi300.yaml")],
    "ensemble": [sys.executable, str(REPO / "scripts" / "ensemble.py")],
    "factors": qrun_command() + [str(WORKFLOWS / "kronos_lightgbm_csi300.yaml")],
}
#: what a step needs to have run before it in the same seed's folder
NEEDS = {"ensemble": {"kronos", "lightgbm"}}
#: Qlib's model-zoo columns, in its order
COLUMNS = ["IC", "ICIR", "RankIC", "RankICIR", "excess return (ann., with cost)", "information ratio (with cost)",
           "max drawdown (with cost)"]


def seed_env(k: int, provider: Path, cache: Path) -> dict[str, str]:
    return {"QLIB_DATA": str(provider), "KRONOS_CACHE": str(cache), "SEED": str(42 + k), "SAMPLE_SEED": str(k)}


def run_step(name: str, folder: Path, env: dict[str, str]) -> float:
    """Run one step in ``folder`` (its output in ``<name>.log``) unless it finished before; its wall time in s."""
    done = folder / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())["wall_s"]
    print(f"{folder.name}: {name} ...", flush=True)
    began = time.perf_counter()
    with open(folder / f"{name}.log", "w") as log:
        result = subprocess.run(STEPS[name], cwd=folder, env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"{folder.name}: {name} failed ({result.returncode}); the end of {folder / f'{name}.log'}:\n"
                 + (folder / f"{name}.log").read_text()[-4000:])
    atomic_write_text(done, json.dumps({"wall_s": wall, "env": env}))
    print(f"  {wall / 60:.1f} min", flush=True)
    return wall


def seed_metrics(folder: Path, provider: Path, steps: list[str]) -> dict[str, dict[str, float]]:
    """Each step's row of the model-zoo table; with both Kronos and LightGBM, Kronos beside LightGBM (rank
    correlation, residual IC); with the ensemble, its chosen weight."""
    init_recorder_store(f"sqlite:///{folder / 'mlruns.db'}", str(provider))
    runs = {step: load_run(RUNS[step]) for step in steps}
    rows = {step: summarize(run) for step, run in runs.items()}
    if {"kronos", "lightgbm"} <= set(runs):
        kronos, lgb = runs["kronos"], runs["lightgbm"]
        rows["kronos"].update(residual_ic(kronos.pred.iloc[:, 0], lgb.pred.iloc[:, 0], lgb.label.iloc[:, 0]))
        rows["kronos"]["rank correlation with LightGBM"] = float(signal_correlation(kronos, lgb).mean())
    if "ensemble" in runs:
        from qlib.workflow import R

        recorder = R.get_recorder(recorder_id=runs["ensemble"].recorder_id, experiment_name=RUNS["ensemble"])
        rows["ensemble"]["Kronos weight"] = float(recorder.list_params()["ensemble.kronos_weight"])
    return rows


def across_seeds(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and sample std across seeds of every cell, rows in the steps' order."""
    grouped = pd.concat(frames, keys=range(len(frames))).groupby(level=1)
    return grouped.mean().reindex(frames[0].index), grouped.std().reindex(frames[0].index)


def mean_std(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """'mean ± std' of every cell, as text."""
    mean, std = across_seeds(frames)
    fmt = {c: ("{:.2%}" if "return" in c or "drawdown" in c else "{:.4f}") for c in mean.columns}
    return pd.DataFrame({c: [f"{fmt[c].format(m)} ± {fmt[c].format(s)}" for m, s in zip(mean[c], std[c])]
                         for c in mean.columns}, index=mean.index)


def plot(frames: list[pd.DataFrame], path: Path) -> None:
    metrics = ["RankIC", "ICIR", "information ratio (with cost)"]
    mean, std = across_seeds(frames)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for ax, metric in zip(axes, metrics):
        ax.bar(mean.index, mean[metric], yerr=std[metric], capsize=4, color=[f"C{i}" for i in range(len(mean))])
        for k, frame in enumerate(frames):
            ax.scatter(frame.index, frame[metric], color="black", s=10, zorder=3, label="seeds" if k == 0 else None)
        ax.set_title(metric)
        ax.axhline(0, color="grey", linewidth=0.5)
    axes[0].legend()
    fig.suptitle(f"test 2020-2022, mean ± std over {len(frames)} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    parser.add_argument("--work", default=str(REPO / "outputs" / "seeds"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", default=None, help="the forecast cache of all seeds (default: --work/forecasts)")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS),
                        help="the steps to run for every seed (default: all)")
    parser.add_argument("--stages", default=None,
                        help="finished stage folder of a full run of the default workflow (seed 0), to reuse")
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error("a std needs at least 2 seeds")
    steps = [step for step in STEPS if step in args.steps]  # in their order
    for step in steps:
        if NEEDS.get(step, set()) - set(steps):
            parser.error(f"step {step} needs {sorted(NEEDS[step])}")
    work, provider = Path(args.work).resolve(), Path(args.provider).resolve()
    os.environ.clear()  # full scale: the workflows' own dates and preset, whatever this shell sets
    os.environ.update(full_scale_environ())
    cache = Path(args.cache).resolve() if args.cache else work / "forecasts"

    walls, frames = {}, []
    for k in range(args.seeds):
        folder = work / f"seed{k}"
        folder.mkdir(parents=True, exist_ok=True)
        env = seed_env(k, provider, cache)
        if k == 0 and args.stages and not (folder / "runs").exists():
            finetune = load_workflow(WORKFLOWS / "kronos_csi300.yaml", env)["task"]["model"]["kwargs"]["finetune"]
            shutil.copytree(Path(args.stages).resolve(), folder / finetune["output_dir"])
        walls[k] = {name: run_step(name, folder, env) for name in steps}
        frames.append(pd.DataFrame(seed_metrics(folder, provider, steps)).T.loc[steps])

    table = mean_std(frames)
    plot(frames, HERE / "seeds.png")
    wall = pd.DataFrame(walls).T / 60
    lines = [
        "## Results over seeds (`benchmarks/bench_seeds.py`)", "",
        f"{args.seeds} seeds of each workflow at full scale on the default dates (train 2010-2017, valid 2018-2019, "
        "test 2020-01-01..2022-12-30, TopkDropout 50/5 against SH000300 with Qlib's benchmark costs), on "
        "`../shared/cn_data`. Seed k: `SEED=42+k` (Kronos's training seed, LightGBM's seed) and `SAMPLE_SEED=k` "
        "(Kronos's sampling seed); seed 0 is the shipped default. Mean ± sample std across seeds. Steps: "
        + ", ".join(f"`{step}` ({RUNS[step]})" for step in steps) + f". Machine: {machine()}.", "",
        "| run | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS),
        *[f"| {RUNS[step]} | " + " | ".join(table.loc[step, COLUMNS]) + " |" for step in steps], "",
    ]
    if "rank correlation with LightGBM" in table.columns:
        k = table.loc["kronos"]
        lines += [f"Kronos beside LightGBM (the same seed's pair): daily rank correlation "
                  f"{k['rank correlation with LightGBM']}; residual IC after removing LightGBM's score (per-day "
                  f"cross-sectional regression) {k['residual IC']} (t {k['residual IC t']}), residual RankIC "
                  f"{k['residual RankIC']} (t {k['residual RankIC t']}).", ""]
    if "ensemble" in steps:
        lines += [f"Ensemble: Kronos weight {table.loc['ensemble', 'Kronos weight']}, per seed "
                  + ", ".join(f"{f.loc['ensemble', 'Kronos weight']:.2f}" for f in frames) + ".", ""]
    per_seed = pd.concat({k: f[["RankIC", "information ratio (with cost)"]] for k, f in enumerate(frames)}, axis=1)
    reuse = []
    if args.stages:
        reuse.append(f"seed 0 started from the finished training in {args.stages}, so its Kronos time leaves training "
                     "out")
    if args.cache:
        reuse.append(f"the forecast cache {args.cache} was filled before, so a step that finds its model's forecasts "
                     "there does not sample them again")
    lines += [
        *([f"Reused: {'; '.join(reuse)}.", ""] if reuse else []),
        "Per seed (RankIC / information ratio with cost):", "",
        "| run | " + " | ".join(f"seed {k}" for k in range(len(frames))) + " |", "|---|" + "---|" * len(frames),
        *[f"| {RUNS[step]} | " + " | ".join(f"{per_seed.loc[step, (k, 'RankIC')]:.4f} / "
                                           f"{per_seed.loc[step, (k, 'information ratio (with cost)')]:.2f}"
                                           for k in range(len(frames))) + " |" for step in steps], "",
        "Wall time of each step (min):", "",
        "| seed | " + " | ".join(steps) + " |", "|---|" + "---|" * len(steps),
        *[f"| {k} | " + " | ".join(f"{wall.loc[k, step]:.1f}" for step in steps) + " |" for k in wall.index], "",
        "![results over seeds](seeds.png)",
    ]
    update_section("seeds", "\n".join(lines))


if __name__ == "__main__":
    main()
