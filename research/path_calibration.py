"""Calibrated paths: the per-step drift shrink, spread scale and volatility anchor of
research/calibrated_paths.py, fitted on the valid segment and then scored on test beside the
random-walk, bootstrap and zero-return baselines.

Two phases, so that the choice is recorded before any test figure exists:

- ``choose``: the shipped workflow's model (fitted as qrun fits it, reusing the stage folders of --work) samples
  --paths + --centre-paths paths on every --every-k-days-th valid day whose horizon ends inside valid (the last
  --centre-paths only locate the centre of the others); the calibration is fitted on those
  (research.calibrated_paths.fit_calibration refuses anything outside valid) and written,
  with the sampling it was fitted on, to --record (research/path_calibration.json: committed beside RESULTS.md, so
  the choice outlives the work folder and its commit precedes every test figure), its table to RESULTS.md
  ("path-calibration").
- ``test``: refuses to run without that file, or when the workflow now samples otherwise than the paths the
  calibration was fitted on; samples the test days the same way (the larger of --paths and the shipped path
  count, plus the calibration's centre paths), scores the first --paths, and the first shipped-count, paths raw and
  calibrated step by step (fair CRPS skill against the random walk, 50% / 90% band coverage
  against a calibrated sampler of the same path count, PIT) and writes RESULTS.md ("path-calibration-test") and
  research/path_calibration.png.

    python -m research.path_calibration choose --work outputs/full_run   # [--record <file>]
    python -m research.path_calibration test --work outputs/full_run
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

import pandas as pd

from kronos_qlib.errors import ConfigError
from kronos_qlib.evaluation.forecast_scores import evaluate
from kronos_qlib.evaluation.forecasts import ForecastSet, load_closes
from kronos_qlib.files import atomic_write_text

from research.calibrated_paths import PathCalibration, fit_calibration, split_centre, trailing_volatility
from research.calibration import sample_days
from research.fitted_model import fit_workflow_model, require_shipped_sampling
from research.results import machine, require_choice, update_section
from research.selection import scoring_days

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

WINDOW, MIN_HISTORY = 60, 20
#: the sampling settings a calibration is fitted for: test refuses paths sampled otherwise
SAMPLING = ("T", "top_p", "top_k")


def forecasts_of(model, dataset, segment: str, paths: int, every_k_days: int) -> tuple[ForecastSet, pd.DataFrame]:
    """The members' forecasts of every k-th day of ``segment`` whose horizon ends inside it, with ``paths``
    paths, and the closes they are scored on (up to the segment's last horizon)."""
    from qlib.data import D

    start, end = (pd.Timestamp(d) for d in dataset.segments[segment])
    days = scoring_days(pd.DatetimeIndex(D.calendar()), start, end, every_k_days, model.forecast.pred_len)
    forecasts = sample_days(_with_paths(model, paths), dataset, days, every_k_days, dataset.handler.market)
    return forecasts, load_closes(forecasts, WINDOW).loc[:end]


def _with_paths(model, paths: int):
    point = copy.copy(model)  # same weights, other path count: its own cache folder
    point.sampling = dataclasses.replace(model.sampling, sample_count=paths)
    return point


def choose(args) -> None:
    work = Path(args.work).resolve()
    model, dataset, _ = fit_workflow_model(work, args.provider)
    forecasts, closes = forecasts_of(model, dataset, "valid", args.paths + args.centre_paths, args.every_k_days)
    valid = tuple(dataset.segments["valid"])
    calibration, table = fit_calibration(forecasts, closes, valid, args.centre_paths, WINDOW, MIN_HISTORY)
    sampling = {name: getattr(model.sampling, name) for name in SAMPLING}
    atomic_write_text(Path(args.record), json.dumps({**dataclasses.asdict(calibration), "sampling": sampling,
                                                     "paths": args.paths, "every_k_days": args.every_k_days,
                                                     "forecasts": len(forecasts.dates)}, indent=1))
    lines = ["## Path calibration: the valid choice (`python -m research.path_calibration choose`)", "",
             f"Fitted on valid {valid[0]}..{valid[1]} only: {len(forecasts.dates)} member forecasts of every "
             f"{args.every_k_days}th trading day whose horizon ends inside valid, {args.paths} paths each, of the "
             f"shipped workflow's model, sampled with T={sampling['T']:g}, top_p={sampling['top_p']:g}. At step h "
             f"each path's log return r becomes drift[h] * c + scale[h] * (v / s) ** anchor[h] * (r - c), c the "
             f"median and s the std of {args.centre_paths} other paths of the same forecast (sampled with it but "
             f"neither moved nor scored, so that the moved paths stay independent draws and the fair CRPS stays "
             f"fair), v the spread of a random walk with the stock's {WINDOW}-day volatility up to t (every price "
             f"of the step moves with the close); (drift, scale, anchor) is the grid point (drift 0..1 by 0.1, "
             f"scale 0.5..3 by 0.1, anchor 0, 0.5, 1) with the lowest mean fair CRPS of the return on valid, chosen "
             f"before test was sampled. Machine: {machine()}.", "",
             "| step | drift | scale | anchor | CRPS of the return, sampled | calibrated | forecasts |",
             "|---|---|---|---|---|---|---|",
             *[f"| {step} | {r.drift:.1f} | {r.scale:.1f} | {r.anchor:.1f} | {r.crps_sampled:.5f} "
               f"| {r.crps_calibrated:.5f} "
               f"| {r.forecasts:.0f} |" for step, r in table.iterrows()]]
    update_section("path-calibration", "\n".join(lines))


def test(args) -> None:
    work = Path(args.work).resolve()
    record = require_choice(Path(args.record), "python -m research.path_calibration")
    try:
        calibration = PathCalibration.load(record)
    except ConfigError as err:
        sys.exit(f"{err}: run `python -m research.path_calibration choose` again")
    require_shipped_sampling(json.loads(record.read_text()).get("sampling"), SAMPLING,
                             "python -m research.path_calibration")
    model, dataset, _ = fit_workflow_model(work, args.provider)
    tables, coverage = {}, {}
    counts = sorted({args.paths, model.sampling.sample_count})
    drawn, closes = forecasts_of(model, dataset, "test", counts[-1] + calibration.centre_paths, args.every_k_days)
    moved, centre_closes = split_centre(drawn, calibration.centre_paths)
    volatility = trailing_volatility(closes, moved, WINDOW, MIN_HISTORY)
    for paths in counts:  # path i is the same draw whatever the path count, so the first m are an m-path sample
        forecasts = dataclasses.replace(moved, closes=moved.closes[:, :paths])
        calibrated = dataclasses.replace(forecasts, closes=calibration.apply_to_closes(
            forecasts.closes, forecasts.last_close, centre_closes, volatility))
        raw, adjusted = (evaluate(f, closes, window=WINDOW, min_history=MIN_HISTORY) for f in (forecasts, calibrated))
        table = pd.concat({"sampled": raw.table.loc["kronos"], "calibrated": adjusted.table.loc["kronos"],
                           **{name: raw.table.loc[name] for name in ("random_walk", "bootstrap", "zero_return")}})
        tables[paths] = table
        coverage[paths] = (raw, adjusted)
    start, end = dataset.segments["test"]
    lines = ["## Path calibration on test (`python -m research.path_calibration test`)", "",
             f"The calibration chosen on valid (section above) applied to the test forecasts {start}..{end}, every "
             f"{args.every_k_days}th trading day whose horizon ends inside test, members only, its centre the median "
             f"of the same {calibration.centre_paths} other paths of each forecast at every path count (so a "
             f"calibrated m-path forecast costs m + {calibration.centre_paths} draws), beside the "
             f"baselines of kronos_qlib/evaluation/forecast_scores.py (random walk with the stock's 60-day "
             f"volatility, its bootstrap, no move). Skill: 1 - CRPS / CRPS of the random walk, per step; coverage "
             f"of the central 50% / 90% band against what a calibrated sampler of the same path count covers. Machine: "
             f"{machine()}.", ""]
    for paths, table in tables.items():
        steps = [s for s in table.loc["sampled"].index if s != "all"]
        lines += [f"{paths} paths per forecast:", "",
                  "| step | skill, sampled | skill, calibrated | bootstrap | zero return | coverage 50 sampled / "
                  "calibrated (a calibrated sampler) | coverage 90 sampled / calibrated (a calibrated sampler) |",
                  "|---|---|---|---|---|---|---|"]
        for step in [*steps, "all"]:
            s, c = table.loc[("sampled", step)], table.loc[("calibrated", step)]
            lines.append(f"| {step} | {s.crps_skill_vs_rw:+.3f} | {c.crps_skill_vs_rw:+.3f} "
                         f"| {table.loc[('bootstrap', step)].crps_skill_vs_rw:+.3f} "
                         f"| {table.loc[('zero_return', step)].crps_skill_vs_rw:+.3f} "
                         f"| {s.coverage_50:.3f} / {c.coverage_50:.3f} ({s.calibrated_50:.3f}) "
                         f"| {s.coverage_90:.3f} / {c.coverage_90:.3f} ({s.calibrated_90:.3f}) |")
        lines.append("")
    lines.append("![path calibration](path_calibration.png)")
    plot(tables, coverage, HERE / "path_calibration.png")
    update_section("path-calibration-test", "\n".join(lines))


def plot(tables: dict, coverage: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, (paths, table) in enumerate(tables.items()):
        for name, style in (("sampled", "--"), ("calibrated", "-")):
            rows = table.loc[name].drop("all")
            axes[0].plot(rows.index.astype(int), rows["crps_skill_vs_rw"], style, color=f"C{i}",
                         label=f"{name}, {paths} paths")
        raw, adjusted = coverage[paths]
        for name, quality, style in (("sampled", raw, "--"), ("calibrated", adjusted, "-")):
            ranks = quality.pit.loc["kronos"].mean(axis=0)
            axes[1].plot(ranks.index.astype(int) / (len(ranks) - 1), ranks * len(ranks), style, color=f"C{i}",
                         label=f"{name}, {paths} paths")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_title("fair CRPS skill vs the random walk, by step (test)")
    axes[0].set_xlabel("step")
    axes[1].axhline(1, color="grey", lw=0.8)
    axes[1].set_title("PIT histogram, mean over steps (1 = calibrated)")
    axes[1].set_xlabel("rank of the realized close among the paths (share)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("choose", "test"))
    parser.add_argument("--work", default=str(REPO / "outputs" / "full_run"), help="where qrun ran (runs/)")
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    parser.add_argument("--paths", type=int, default=20, help="paths per forecast to fit and score on")
    parser.add_argument("--centre-paths", type=int, default=20,
                        help="choose: other paths per forecast whose median is the centre (sampled, not scored)")
    parser.add_argument("--every-k-days", type=int, default=5)
    parser.add_argument("--record", default=str(HERE / "path_calibration.json"),
                        help="the calibration chosen on valid (written by choose, read by test)")
    args = parser.parse_args()
    choose(args) if args.phase == "choose" else test(args)


if __name__ == "__main__":
    main()
