"""Results over seeds, in Qlib's benchmark format: each workflow run with several seeds at full scale (CPU preset),
every metric reported as mean +- std across seeds in research/RESULTS.md, with the wall times.

Seed k runs, in its own folder --work/seed<k> (mlruns.db, runs/), with SEED=42+k (Kronos's, LightGBM's and GRU's
training seed) and SAMPLE_SEED=k (Kronos's sampling seed), so seed 0 is the shipped default:

1. `qrun workflows/kronos_csi300.yaml`
2. `qrun workflows/lightgbm_csi300.yaml`
3. `qrun workflows/gru_alpha360_csi300.yaml`: Qlib's GRU on Alpha360, the supervised model that reads the same raw
   bars as Kronos, its epochs capped by GRU_EPOCHS (--gru-epochs) on a CPU
4. `python scripts/ensemble.py`: Kronos and LightGBM combined, the declared equal blend of their daily rank-gauss
   scores; `ensemble_valid`: the weight chosen on valid instead (in-sample); `ensemble_gru`: Kronos and GRU
5. `qrun workflows/kronos_lightgbm_csi300.yaml`: LightGBM on Alpha158 plus Kronos factors (samples every day from
   2015 on: the longest step by far)
6. the control of step 5: `TRAIN_START=<its FACTOR_TRAIN_START> qrun workflows/lightgbm_csi300.yaml`, LightGBM /
   Alpha158 alone on the training rows the factor workflow's LightGBM has, in the subfolder control/ (it records
   under the same experiment name as step 2)

and then the metrics of the runs, Kronos's rank correlation with LightGBM and its partial IC given LightGBM's
score. Every "A beats B" is a paired test: the daily difference of the two runs' RankIC and of their daily excess
returns with cost, averaged over seeds day by day, with its Newey-West t (the seeds share one test period, whose
sampling error dominates their spread); each run's daily IC, RankIC and excess return are kept per seed for that.
--steps runs a subset (the same for every seed). A study is named by its --work folder. As soon as a seed
finishes, its results are merged into the committed record files (below; each seed keeps the machine, commit and
reuse note it ran with) and the RESULTS.md section and plot are rewritten, so a study cut short keeps its finished
seeds even when its work folder is lost, and the same study run again runs only the seeds not recorded. A step
recorded by another study is replaced whole by the new study's seeds, unless the new seed reproduces that study's
same seed up to rounding (then the two ran the same experiment, and its other seeds join the new study); the steps an
invocation does not run keep theirs (e.g. the long factor step measured on another day). Within a seed, a step
that finished is not run again (its `<step>.json` in the work folder holds its wall time, machine and commit), and
the forecast cache (--cache) is shared, as its files are keyed by model, sampling settings and seed.

--dates picks the dates: `default` (the workflows' own: train 2010-2017, valid 2018-2019, test 2020-2022; records
research/seeds.json and seeds_daily.csv, section "seeds", seeds.png) or `zoo` (Qlib's model-zoo segments as far
as the data allows: train 2010-2014, valid 2015-2016, test 2017-01-01..2020-07-31; records seeds_zoo.json and
seeds_zoo_daily.csv, section "zoo", seeds_zoo.png, beside the zoo's published rows; its steps are the zoo's rows,
LightGBM and GRU, GRU capped at --gru-epochs as on the default dates, where the zoo trains up to 200 epochs).

    python -m research.seeds [--seeds 3] [--provider ../shared/cn_data] [--work outputs/seeds]
    python -m research.seeds --stages outputs/full_run/runs/<name> --cache outputs/full_run/forecasts
        # seed 0 reuses a finished full run of the default workflow (its stage folder is copied)
    python -m research.seeds --work outputs/seeds_T1.2 --trained-from outputs/seeds
        # a new sampling or signal default: every seed reuses the earlier study's Kronos trainings
    python -m research.seeds --dates zoo --work outputs/zoo       # its steps: lightgbm gru
    python -m research.seeds --report-only      # rewrite the section from seeds.json / seeds_daily.csv
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kronos_qlib.evaluation import (NW_LAG, RecordedRun, init_recorder_store, load_run, mean_over_seeds,
                                    mean_t, paired_difference, partial_ic, signal_correlation, summarize)
from kronos_qlib.files import atomic_write_text
from kronos_qlib.qrun import WORKFLOWS, load_workflow, qrun_command

from research.results import SCALE_VARIABLES, git_commit, machine, update_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: each step's experiment, where the step records its run
RUNS = {"kronos": "kronos_csi300", "lightgbm": "lightgbm_csi300", "gru": "gru_alpha360_csi300",
        "ensemble": "ensemble_csi300", "ensemble_valid": "ensemble_valid_csi300", "ensemble_gru": "ensemble_gru_csi300",
        "factors": "kronos_lightgbm_csi300", "control": "lightgbm_csi300", "head": "kronos_head_csi300",
        "ensemble_head": "ensemble_head_csi300", "ensemble_head_gru": "ensemble_head_gru_csi300"}
#: each step's name in the tables
LABELS = {**RUNS, "ensemble": "ensemble_csi300 (Kronos + LightGBM)",
          "ensemble_valid": "ensemble_csi300 (weight chosen on valid)",
          "ensemble_gru": "ensemble_gru_csi300 (Kronos + GRU)",
          "control": "lightgbm_csi300 (control)", "head": "kronos_head_csi300 (return head)",
          "ensemble_head": "ensemble_head_csi300 (head + LightGBM)",
          "ensemble_head_gru": "ensemble_head_gru_csi300 (head + GRU)"}
HEAD_BLEND = ["--kronos", "kronos_head_csi300", "--kronos-workflow",
                              str(WORKFLOWS / "kronos_head_csi300.yaml")]
ENSEMBLE = [sys.executable, str(REPO / "scripts" / "ensemble.py")]
STEPS = {
    "kronos": qrun_command() + [str(WORKFLOWS / "kronos_csi300.yaml")],
    "lightgbm": qrun_command() + [str(WORKFLOWS / "lightgbm_csi300.yaml")],
    "gru": qrun_command() + [str(WORKFLOWS / "gru_alpha360_csi300.yaml")],
    "ensemble": ENSEMBLE,
    "ensemble_valid": ENSEMBLE + ["--weight", "valid", "--experiment", RUNS["ensemble_valid"]],
    "ensemble_gru": ENSEMBLE + ["--baseline", RUNS["gru"], "--baseline-workflow",
                                str(WORKFLOWS / "gru_alpha360_csi300.yaml"), "--experiment", RUNS["ensemble_gru"]],
    "factors": qrun_command() + [str(WORKFLOWS / "kronos_lightgbm_csi300.yaml")],
    "control": qrun_command() + [str(WORKFLOWS / "lightgbm_csi300.yaml")],
    "head": qrun_command() + [str(WORKFLOWS / "kronos_head_csi300.yaml")],
    "ensemble_head": ENSEMBLE + HEAD_BLEND + ["--experiment", RUNS["ensemble_head"]],
    "ensemble_head_gru": ENSEMBLE + HEAD_BLEND + ["--baseline", RUNS["gru"], "--baseline-workflow",
                                                  str(WORKFLOWS / "gru_alpha360_csi300.yaml"), "--experiment",
                                                  RUNS["ensemble_head_gru"]],
}


@dataclass(frozen=True)
class Dates:
    """A set of segments the study runs on, with where its records and its RESULTS.md section go."""

    name: str
    env: dict  # the date variables the workflows read (empty: their defaults)
    described: str
    records: Path
    daily: Path
    section: str
    plot: Path
    published: dict  # step -> the model zoo's published row on these dates (Qlib's examples/benchmarks/README.md)
    steps: tuple = tuple(STEPS)  # the steps these dates can run (and --steps' default)


DATES = {
    "default": Dates("default", {}, "the default dates (train 2010-2017, valid 2018-2019, test 2020-01-01..2022-12-30)",
                     HERE / "seeds.json", HERE / "seeds_daily.csv", "seeds", HERE / "seeds.png", {}),
    "zoo": Dates("zoo", {"TRAIN_START": "2010-01-01", "TRAIN_END": "2014-12-31", "VALID_START": "2015-01-01",
                         "VALID_END": "2016-12-31", "TEST_START": "2017-01-01", "TEST_END": "2020-07-31",
                         "BACKTEST_END": "2020-07-31"},
                 "the model zoo's dates as far as the data allows (train 2010-2014 where the zoo starts 2008, valid "
                 "2015-2016, test 2017-01-01..2020-07-31; GRU's epochs capped as on the default dates, where the zoo "
                 "trains up to 200)",
                 HERE / "seeds_zoo.json", HERE / "seeds_zoo_daily.csv", "zoo", HERE / "seeds_zoo.png",
                 # mean ± std over 20 seeds, Qlib's CSI300 cn_data (v1/v2 of Yahoo-sourced data), Qlib's README
                 {"lightgbm": {"IC": (0.0448, 0.00), "ICIR": (0.3660, 0.00), "RankIC": (0.0469, 0.00),
                               "RankICIR": (0.3877, 0.00), "excess return (ann., with cost)": (0.0901, 0.00),
                               "information ratio (with cost)": (1.0164, 0.00),
                               "max drawdown (with cost)": (-0.1038, 0.00)},
                  "gru": {"IC": (0.0493, 0.00), "ICIR": (0.3772, 0.04), "RankIC": (0.0584, 0.00),
                          "RankICIR": (0.4638, 0.03), "excess return (ann., with cost)": (0.0720, 0.02),
                          "information ratio (with cost)": (0.9730, 0.33),
                          "max drawdown (with cost)": (-0.0821, 0.02)}},
                 # the zoo's rows only: the factor workflow's Kronos years (2010-2014) would leave LightGBM no rows
                 ("lightgbm", "gru")),
}
#: GRU's epoch cap on a CPU (GRU_EPOCHS; the zoo trains up to 200, stopping after 20 without a better valid
#: loss): an epoch over the default training years takes several minutes on 2 cores (one training batch of 800 and
#: an evaluation pass of train and valid), so 10 epochs already make a GRU run the longest step after the factors
GRU_EPOCHS = 10
#: the steps that record under another step's experiment name: each runs in a subfolder named for it (its own
#: mlruns.db)
OWN_FOLDER = {"control"}
#: the steps that sample Kronos's paths (through the forecast cache)
SAMPLING_STEPS = {"kronos", "ensemble_valid", "factors"}
#: the steps that train a Kronos (the workflow's own, and the factor workflow's on earlier years)
TRAINING_STEPS = {"kronos", "factors", "head"}
#: the machine of a step whose json predates steps keeping theirs
LEGACY_MACHINE = "machine not recorded (the step ran before its record kept it)"
#: what a step needs to have run before it in the same seed's folder
NEEDS = {"ensemble": {"kronos", "lightgbm"}, "ensemble_valid": {"kronos", "lightgbm"},
         "ensemble_gru": {"kronos", "gru"}, "ensemble_head": {"head", "lightgbm"},
         "ensemble_head_gru": {"head", "gru"}}
#: what a step's row reads beside it when both are asked for: Kronos's partial IC given LightGBM's score
READS = {"kronos": {"lightgbm"}, "head": {"lightgbm", "gru"}}
DAILY_COLUMNS = ("IC", "RankIC", "excess")
#: Qlib's model-zoo columns, in its order
COLUMNS = ["IC", "ICIR", "RankIC", "RankICIR", "excess return (ann., with cost)", "information ratio (with cost)",
           "max drawdown (with cost)"]


def seed_env(k: int, provider: Path, cache: Path, dates: Dates, gru_epochs: int) -> dict[str, str]:
    return {"QLIB_DATA": str(provider), "KRONOS_CACHE": str(cache), "SEED": str(42 + k), "SAMPLE_SEED": str(k),
            "GRU_EPOCHS": str(gru_epochs), **dates.env}


def step_env(name: str, env: dict[str, str]) -> dict[str, str]:
    """A step's variables: its seed's, and for the control the factor workflow's first LightGBM training day, read
    from that workflow so that the two cannot drift apart."""
    if name != "control":
        return env
    factors = load_workflow(WORKFLOWS / "kronos_lightgbm_csi300.yaml", env)
    return {**env, "TRAIN_START": factors["task"]["dataset"]["kwargs"]["segments"]["train"][0]}


def step_folder(name: str, folder: Path) -> Path:
    return folder / name if name in OWN_FOLDER else folder


def run_step(name: str, folder: Path, env: dict[str, str], note: str) -> dict:
    """Run one step in its folder (its output in ``<name>.log``) unless it finished before; its record: wall time,
    variables, and the machine, commit and reuse ``note`` it ran with (kept with the step, so a step re-read later
    is not credited to a later commit)."""
    seed, folder, env = folder.name, step_folder(name, folder), step_env(name, env)
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / f"{name}.json"
    if done.exists():
        return {"machine": LEGACY_MACHINE, "note": "", **json.loads(done.read_text())}
    print(f"{seed}: {name} ...", flush=True)
    where = machine(git_commit())  # the code the step's own process loads now
    began = time.perf_counter()
    with open(folder / f"{name}.log", "w") as log:
        result = subprocess.run(STEPS[name], cwd=folder, env={**os.environ, **env}, stdout=log,
                                stderr=subprocess.STDOUT)
    wall = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"{seed}: {name} failed ({result.returncode}); the end of {folder / f'{name}.log'}:\n"
                 + (folder / f"{name}.log").read_text()[-4000:])
    ran = {"wall_s": wall, "env": env, "machine": where, "note": note}
    atomic_write_text(done, json.dumps(ran))
    print(f"  {wall / 60:.1f} min", flush=True)
    return ran


def daily_series(run: RecordedRun) -> pd.DataFrame:
    """A run's daily IC, RankIC and excess return over the benchmark with cost."""
    series = {"IC": run.ic, "RankIC": run.rank_ic, "excess": run.excess_return(True)}
    return pd.DataFrame(series).rename_axis("datetime")


def seed_metrics(folder: Path, provider: Path, steps: list[str]) -> tuple[dict[str, dict[str, float]],
                                                                          dict[str, pd.DataFrame]]:
    """Each step's row of the model-zoo table and its daily series; with both Kronos and LightGBM, Kronos beside
    LightGBM (rank correlation, partial IC); with the ensemble, its weight."""
    loaded = {}
    for where in sorted({step_folder(s, folder) for s in steps}, key=lambda f: f == folder):  # the seed folder last:
        init_recorder_store(f"sqlite:///{where / 'mlruns.db'}", str(provider))           # the weight is read there
        loaded.update({s: load_run(RUNS[s]) for s in steps if step_folder(s, folder) == where})
    runs = {step: loaded[step] for step in steps}
    rows = {step: summarize(run) for step, run in runs.items()}
    for step in ("kronos", "head"):
        if {step, "lightgbm"} <= set(runs):
            kronos, lgb = runs[step], runs["lightgbm"]
            rows[step].update(partial_ic(kronos.pred.iloc[:, 0], lgb.pred.iloc[:, 0], lgb.label.iloc[:, 0]))
            rows[step]["rank correlation with LightGBM"] = float(signal_correlation(kronos, lgb).mean())
    if {"head", "gru"} <= set(runs):
        rows["head"]["rank correlation with GRU"] = float(signal_correlation(runs["head"], runs["gru"]).mean())
    for step in {"ensemble", "ensemble_valid"} & set(runs):
        from qlib.workflow import R

        params = R.get_recorder(recorder_id=runs[step].recorder_id, experiment_name=RUNS[step]).list_params()
        rows[step]["Kronos weight"] = float(params["ensemble.kronos_weight"])
    return rows, {step: daily_series(run) for step, run in runs.items()}


def record_seed(k: int, study: str, rows: dict[str, dict[str, float]], ran: dict[str, dict],
                daily: dict[str, pd.DataFrame], dates: Dates) -> tuple[dict, pd.DataFrame]:
    """Merge seed ``k``'s results of the steps it ran into the committed record files, atomically, as soon as the
    seed finishes, so that a study cut short (a session's end takes the work folder with it) keeps its finished
    seeds and a later invocation of the same study runs only the missing ones. A step recorded under another study
    (earlier settings) is replaced whole: one row never mixes two studies' seeds, unless this seed reproduces that
    study's seed up to rounding (:func:`reproduces`). Each seed keeps the machine, commit and reuse note it ran with.
    Returns the merged records and daily series."""
    records = read_records(dates.records)
    kept = read_daily(dates.daily)
    for step, row in rows.items():
        if records.get(step, {}).get("study") != study and not reproduces(records, step, k, row):
            records[step] = {"study": study, "seeds": {}}
            kept = kept[kept["step"] != step]
        records[step]["study"] = study  # a reproducing seed brings the other study's seeds into this one
        records[step]["seeds"][str(k)] = {**row, **{key: ran[step][key] for key in ("wall_s", "machine", "note")}}
        kept = kept[~((kept["step"] == step) & (kept["seed"] == k))]
    new = [frame.reset_index().assign(step=step, seed=k) for step, frame in daily.items()]
    merged = pd.concat([kept, *new], ignore_index=True)[["step", "seed", "datetime", *DAILY_COLUMNS]]
    atomic_write_text(dates.records, json.dumps(records, indent=1, sort_keys=True))
    atomic_write_text(dates.daily, merged.to_csv(index=False, float_format="%.8g"))
    return records, merged


def reproduces(records: dict, step: str, k: int, row: dict[str, float]) -> bool:
    """Whether seed ``k``'s new ``row`` of ``step`` equals, metric for metric, the seed ``k`` another study recorded,
    up to floating-point rounding (relative 1e-9: the same predictions give backtest figures that differ in the last
    digits across library versions): the two studies then ran the same experiment, and that study's other seeds
    join this one."""
    old = records.get(step, {}).get("seeds", {}).get(str(k))
    return old is not None and all(name in old and math.isclose(old[name], value, rel_tol=1e-9, abs_tol=1e-12)
                                   for name, value in row.items())


def read_records(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def recorded(records: dict, step: str, study: str, k: int) -> bool:
    """Whether seed ``k`` of ``step`` is recorded for ``study``."""
    return records.get(step, {}).get("study") == study and str(k) in records[step]["seeds"]


def with_needs(todo: list[str], steps: list[str]) -> list[str]:
    """``todo``, the steps of ``steps`` they need, and the steps all of these read, in the same seed's folder
    (re-read there if they finished, else run), in the order of ``steps``: a needed step that runs again is
    recorded anew, so its row must read what it reads when asked for itself."""
    needed = set(todo).union(*(NEEDS.get(step, set()) for step in todo))
    needed |= set().union(*(READS.get(step, set()) for step in needed))
    return [step for step in steps if step in needed]


def read_daily(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=["step", "seed", "datetime", *DAILY_COLUMNS])
    return pd.read_csv(path, parse_dates=["datetime"])


def seed_mean(daily: pd.DataFrame, step: str, column: str, seeds: list[int] | None = None) -> pd.Series:
    """The step's daily ``column`` averaged over ``seeds`` (default: all it kept) day by day."""
    rows = daily[daily["step"] == step]
    rows = rows if seeds is None else rows[rows["seed"].isin(seeds)]
    return mean_over_seeds([frame.set_index("datetime")[column] for _, frame in rows.groupby("seed")])


def paired_line(daily: pd.DataFrame, a: str, b: str) -> str:
    """a minus b, paired day by day over the mean of the seeds both ran (a seed of one and not the other would
    unpair them), for RankIC and the daily excess return with cost."""
    kept = {step: set(daily.loc[daily["step"] == step, "seed"]) for step in (a, b)}
    if not all(kept.values()):
        return "daily series not kept for " + " and ".join(step for step, seeds in kept.items() if not seeds)
    seeds = sorted(kept[a] & kept[b])
    if not seeds:
        return f"no seed in common ({a}: {sorted(kept[a])}, {b}: {sorted(kept[b])})"
    parts = []
    for column, scale, unit in (("RankIC", 1.0, ""), ("excess", 1e4, " bp/day")):
        d = paired_difference(seed_mean(daily, a, column, seeds), seed_mean(daily, b, column, seeds))
        parts.append(f"{column} {scale * d['mean']:+.4f}{unit} (t {d['t']:.2f}, {d['days']:.0f} days)")
    return "; ".join(parts) + f", over the mean of seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


def seed_frames(records: dict) -> dict[str, pd.DataFrame]:
    """Each recorded step's results, one row per seed, steps in their order."""
    return {step: pd.DataFrame(records[step]["seeds"]).T.drop(columns=["machine", "note"], errors="ignore")
            .astype(float).sort_index(key=lambda i: i.astype(int)) for step in STEPS if step in records}


def mean_std(frame: pd.DataFrame, column: str) -> str:
    """Mean ± std over the seeds that have ``column`` (a figure added later may lack on earlier seeds: named)."""
    fmt = "{:.2%}" if "return" in column or "drawdown" in column else "{:.4f}"
    values = frame[column].dropna()
    spread = fmt.format(values.std()) if len(values) > 1 else "–"  # one seed so far
    part = f" ({len(values)} of {len(frame)} seeds)" if len(values) < len(frame) else ""
    return f"{fmt.format(values.mean())} ± {spread}{part}"


def seed_gain(a: pd.DataFrame, b: pd.DataFrame, column: str) -> str:
    """a minus b, seed by seed (the same seed's pair shares LightGBM's seed), as mean ± std over seeds: the zoo's
    view, beside the paired t."""
    gain = (a[column] - b[column]).dropna()
    spread = f"{gain.std():.4f}" if len(gain) > 1 else "–"
    return f"{column} {gain.mean():+.4f} ± {spread} over {len(gain)} seed{'s' * (len(gain) != 1)}"


def measured_on(records: dict) -> dict[str, list[str]]:
    """The steps measured on each machine and commit (with what they reused), and the study they belong to. A seed
    keeps its own; a record that predates per-seed records keeps one for all its seeds."""
    groups: dict[str, list[str]] = {}
    for step in (s for s in STEPS if s in records):
        entry = records[step]
        study = f" (study `{entry['study']}`)" if "study" in entry else " (a study before per-seed records)"
        for seed in entry["seeds"].values():
            where, note = seed.get("machine", entry.get("machine")), seed.get("note", entry.get("note"))
            key = where + (f"; {note}" if note else "")
            if f"`{step}`{study}" not in groups.setdefault(key, []):
                groups[key].append(f"`{step}`{study}")
    return groups


def plot(frames: dict[str, pd.DataFrame], dates: Dates) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["RankIC", "ICIR", "information ratio (with cost)"]
    names = [LABELS[step] for step in frames]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.4))
    for ax, metric in zip(axes, metrics):
        for i, frame in enumerate(frames.values()):
            ax.bar(i, frame[metric].mean(), yerr=frame[metric].std(), capsize=4, color=f"C{i}")
            ax.scatter([i] * len(frame), frame[metric], color="black", s=10, zorder=3,
                       label="seeds" if i == 0 else None)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(metric)
        ax.axhline(0, color="grey", linewidth=0.5)
    axes[0].legend()
    fig.suptitle(f"{dates.name} dates, test segment: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(dates.plot, dpi=110)


def published_row(step: str, row: dict) -> str:
    def cell(column: str) -> str:
        fmt = "{:.2%}" if "return" in column or "drawdown" in column else "{:.4f}"
        return f"{fmt.format(row[column][0])} ± {fmt.format(row[column][1])}"
    return f"| {LABELS[step]}: the zoo's published row | 20 | " + " | ".join(cell(c) for c in COLUMNS) + " |"


def report(records: dict, daily: pd.DataFrame, dates: Dates) -> str:
    frames = seed_frames(records)
    steps = list(frames)
    title = "Results over seeds" if dates.name == "default" else "Qlib's model zoo reproduced"
    lines = [
        f"## {title} (`python -m research.seeds --dates {dates.name}`)", "",
        f"Each workflow at full scale on {dates.described}, TopkDropout 50/5 against SH000300 with Qlib's "
        "benchmark costs, on `../shared/cn_data`. Seed k: `SEED=42+k` (the training seed of Kronos, LightGBM and "
        "GRU) and `SAMPLE_SEED=k` (Kronos's sampling seed); seed 0 is the shipped default. Mean ± sample std across "
        "seeds.", "",
        "| run | seeds | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS),
        *[line for step, frame in frames.items() for line in
          [f"| {LABELS[step]} | {len(frame)} | " + " | ".join(mean_std(frame, c) for c in COLUMNS) + " |"]
          + ([published_row(step, dates.published[step])] if step in dates.published else [])], "",
    ]
    kronos, lgb = frames.get("kronos"), frames.get("lightgbm")
    measured = [step for step in steps if (daily["step"] == step).any()]
    if measured:
        lines += [f"Daily means over the seeds' mean day by day, Newey-West t (lag {NW_LAG}); excess: the daily "
                  f"portfolio return over SH000300 with cost:", "",
                  "| run | IC (t) | RankIC (t) | excess bp/day (t) |", "|---|---|---|---|"]
        for step in measured:
            cells = [mean_t(seed_mean(daily, step, c)) for c in DAILY_COLUMNS]
            lines.append(f"| {LABELS[step]} | {cells[0]['mean']:.4f} ({cells[0]['t']:.2f}) | {cells[1]['mean']:.4f} "
                         f"({cells[1]['t']:.2f}) | {1e4 * cells[2]['mean']:.2f} ({cells[2]['t']:.2f}) |")
        lines.append("")
    head = frames.get("head")
    if head is not None and "partial IC" in head:
        lines += [f"The return head beside LightGBM and GRU (the same seed's runs): daily rank correlation with "
                  f"LightGBM {mean_std(head, 'rank correlation with LightGBM')}"
                  + (f", with GRU {mean_std(head, 'rank correlation with GRU')}" if "rank correlation with GRU" in head
                     else "")
                  + f"; partial IC given LightGBM's score {mean_std(head, 'partial IC')} (Newey-West t "
                  f"{mean_std(head, 'partial IC t')}).", ""]
    if kronos is not None and "partial IC" in kronos:
        lines += [f"Kronos beside LightGBM (the same seed's pair): daily rank correlation "
                  f"{mean_std(kronos, 'rank correlation with LightGBM')}; partial IC given LightGBM's score (score "
                  f"and label residualized on it per day) {mean_std(kronos, 'partial IC')} (Newey-West t "
                  f"{mean_std(kronos, 'partial IC t')}), partial RankIC {mean_std(kronos, 'partial RankIC')} (t "
                  f"{mean_std(kronos, 'partial RankIC t')}).", ""]
    for step in ("ensemble", "ensemble_valid"):
        if step in frames:
            lines += [f"{LABELS[step]}: the Kronos weight per seed "
                      + ", ".join(f"{w:.2f}" for w in frames[step]["Kronos weight"]) + ".", ""]
    comparisons = [(step, "lightgbm", f"{LABELS[step]} minus LightGBM alone")
                   for step in ("kronos", "head", "gru", "ensemble", "ensemble_valid", "ensemble_head", "factors")
                   if step in frames and lgb is not None]
    comparisons += [(step, "gru", f"{LABELS[step]} minus GRU alone")
                    for step in ("kronos", "head", "ensemble_gru", "ensemble_head_gru")
                    if {step, "gru"} <= set(frames)]
    if {"factors", "control"} <= set(frames):
        comparisons.append(("factors", "control", f"Like for like, {RUNS['factors']} minus its control (LightGBM / "
                            "Alpha158 alone on the same training rows, from FACTOR_TRAIN_START)"))
    for a, b, title in comparisons:
        lines += [f"{title}: paired daily difference {paired_line(daily, a, b)}; per seed "
                  + "; ".join(seed_gain(frames[a], frames[b], c) for c in ("RankIC", "information ratio (with cost)"))
                  + ".", ""]
    seeds = sorted({int(k) for step in steps for k in records[step]["seeds"]})
    lines += [
        "Per seed (RankIC / information ratio with cost; wall time of the step in min):", "",
        "| run | " + " | ".join(f"seed {k}" for k in seeds) + " |", "|---|" + "---|" * len(seeds),
        *[f"| {LABELS[step]} | " + " | ".join(
            f"{frame.loc[str(k), 'RankIC']:.4f} / {frame.loc[str(k), 'information ratio (with cost)']:.2f} "
            f"({frame.loc[str(k), 'wall_s'] / 60:.1f})" if str(k) in frame.index else "–" for k in seeds) + " |"
          for step, frame in frames.items()], "",
        "Measured on:", "",
        *[f"- {', '.join(group)}: {where}" for where, group in measured_on(records).items()], "",
        f"![results over seeds]({dates.plot.name})",
    ]
    plot(frames, dates)
    return "\n".join(lines)


def step_note(name: str, k: int, args: argparse.Namespace) -> str:
    """What seed ``k``'s step reused or capped in this invocation, to be recorded beside its figures."""
    notes = []
    if args.stages and k == 0 and name in {"kronos", "head"}:
        notes.append(f"seed 0 started from the finished training in {args.stages}, so its Kronos time leaves "
                     "the generative training out")
    if args.trained_from and name in TRAINING_STEPS:
        notes.append(f"its Kronos training folders were copied from {args.trained_from}/seed{k}/runs (a finished "
                     "training is reused, a partial one continues), so its time leaves out what they had trained")
    if args.cache and name in SAMPLING_STEPS:
        notes.append(f"the forecast cache {args.cache} was filled before, so a step that finds its model's forecasts "
                     "there does not sample them again")
    if name in {"gru", "ensemble_gru"}:
        notes.append(f"GRU capped at {args.gru_epochs} epochs (GRU_EPOCHS)")
    return "; ".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    parser.add_argument("--work", default=str(REPO / "outputs" / "seeds"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", default=None, help="the forecast cache of all seeds (default: --work/forecasts)")
    parser.add_argument("--steps", nargs="+", choices=list(STEPS),
                        help="the steps to run for every seed (default: all those --dates can run)")
    reuse = parser.add_mutually_exclusive_group()
    reuse.add_argument("--stages", default=None,
                       help="finished stage folder of a full run of the default workflow (seed 0), to reuse")
    reuse.add_argument("--trained-from", default=None,
                       help="the --work of an earlier study with the same preset and dates whose Kronos trainings "
                       "(seed<k>/runs) every seed reuses: for a study that changes only how Kronos samples or scores")
    parser.add_argument("--dates", choices=list(DATES), default="default", help="the segments (see above)")
    parser.add_argument("--gru-epochs", type=int, default=GRU_EPOCHS, help="GRU's epoch cap (GRU_EPOCHS)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the section and plot from the record files, running nothing")
    args = parser.parse_args()
    dates = DATES[args.dates]
    if args.report_only:
        return update_section(dates.section, report(json.loads(dates.records.read_text()), read_daily(dates.daily),
                                                    dates))
    if args.seeds < 2:
        parser.error("a std needs at least 2 seeds")
    steps = [step for step in STEPS if step in (args.steps or dates.steps)]  # in their order
    if set(steps) - set(dates.steps):
        parser.error(f"--dates {dates.name} runs only the steps {', '.join(dates.steps)}, not "
                     f"{', '.join(sorted(set(steps) - set(dates.steps)))}")
    for step in steps:
        if NEEDS.get(step, set()) - set(steps):
            parser.error(f"step {step} needs {sorted(NEEDS[step])}")
    work, provider = Path(args.work).resolve(), Path(args.provider).resolve()
    if args.trained_from:
        missing = [k for k in range(args.seeds) if not (Path(args.trained_from) / f"seed{k}" / "runs").is_dir()]
        if missing:
            parser.error(f"--trained-from {args.trained_from} has no seed{missing[0]}/runs to reuse")
    for name in SCALE_VARIABLES:  # full scale: the workflows' own dates and preset, whatever this shell sets
        os.environ.pop(name, None)
    cache = Path(args.cache).resolve() if args.cache else work / "forecasts"

    study = work.name
    for k in range(args.seeds):
        records = read_records(dates.records)
        missing = [step for step in steps if not recorded(records, step, study, k)]
        if not missing:
            print(f"seed{k}: recorded for study {study} in {dates.records.name}", flush=True)
            continue
        folder = work / f"seed{k}"
        folder.mkdir(parents=True, exist_ok=True)
        env = seed_env(k, provider, cache, dates, args.gru_epochs)
        if args.trained_from and not (folder / "runs").exists():
            shutil.copytree(Path(args.trained_from).resolve() / f"seed{k}" / "runs", folder / "runs")
        if k == 0 and args.stages and not (folder / "runs").exists():
            finetune = load_workflow(WORKFLOWS / "kronos_csi300.yaml", env)["task"]["model"]["kwargs"]["finetune"]
            shutil.copytree(Path(args.stages).resolve(), folder / finetune["output_dir"])
        todo = with_needs(missing, steps)
        finished = {name for name in todo if (step_folder(name, folder) / f"{name}.json").exists()}
        ran = {name: run_step(name, folder, env, step_note(name, k, args)) for name in todo}
        rows, daily = seed_metrics(folder, provider, todo)
        # a recorded step only re-read for another's sake keeps its row (read alone it may lack the partial IC);
        # one that had to run again is recorded anew, since the steps that need it now read that run
        record = [step for step in todo if step in missing or step not in finished]
        rows, daily = ({step: by_step[step] for step in record} for by_step in (rows, daily))
        update_section(dates.section, report(*record_seed(k, study, rows, ran, daily, dates), dates))


if __name__ == "__main__":
    main()
