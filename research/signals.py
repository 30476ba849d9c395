"""Which signal ships: every candidate scored on the VALID segment of the dev split, chosen by the rule of
research/selection.py, recorded, and only then the test table.

Two commands, in this order (the second refuses to run before the first has recorded its choice):

    python -m research.signals choose [--work outputs/signals] [--provider ../shared/cn_data]
    python -m research.signals test   [--work outputs/signals]

``choose`` fits the shipped workflow's model in --work as qrun would (finished stages there are reused), samples
--max-paths paths (with the workflow's T and top_p) for every valid trading day into the forecast cache, and scores
every candidate: each signal of kronos_qlib.signals over each window, from the first m of the sampled paths (the
sampler's draws depend on (seed, day, instrument, path, step) only, so the first m of 40 paths are exactly an
m-path sample), smoothed across days with each half-life. Per candidate: IC, RankIC and the top-quintile spread
with Newey-West t, and the daily top-k excess over the universe with its turnover (a book rebuilt daily: shown,
not used). Every eligible candidate and the incumbent go through Qlib's TopkDropout backtest of the valid segment
with the workflow's strategy and costs, and the rule picks. It writes the choice to --record
(research/signal_choice.json) and the valid table beside it (signal_choice_valid.csv), both committed beside
RESULTS.md so that they outlive the work folder and their commit precedes every test figure, and the RESULTS.md
section "signal choice", before anything of test is computed.
Valid days whose label (close t + 1 to close t + 2) lies past the segment's end are left out of every valid score.

``test`` forecasts the test segment with the chosen path count and scores the chosen signal and the incumbent
there (section "signals"): IC, RankIC, spreads with Newey-West t, Qlib's backtest, and their paired difference.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from kronos_qlib.errors import KronosInputError
from kronos_qlib.evaluation import (LABEL_DAYS, NW_LAG, daily_ic, labels_inside_segment, mean_t, paired_difference,
                                    signal_metrics, topk_excess)
from kronos_qlib.evaluation.backtest import CRITERION, backtest, book, excess_with_cost
from kronos_qlib.files import atomic_write_text
from kronos_qlib.signals import SIGNALS, check_signal, price_limits, score_day, smooth_scores

from research.fitted_model import fit_workflow_model, require_shipped_sampling
from research.results import machine, require_choice, update_section
from research.selection import (ELIGIBILITY, MARGIN_SE, Candidate, SignalChoice, choose_signal, eligible,
                                incumbent)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

logger = logging.getLogger("python -m research.signals")
#: the grid: windows (start, end; None: pred_len), path counts and half-lives (trading days; None: unsmoothed)
WINDOWS = ((1, None), (1, 5))
PATH_COUNTS = (5, 10, 20, 40)
HALFLIVES = (None, 3.0, 10.0)
#: rows of the valid table shown in RESULTS.md (all are in the valid table beside --record)
SHOWN = 15


def candidates(pred_len: int, max_paths: int) -> list[Candidate]:
    """Every valid combination of the grid (a signal whose window or path count it cannot use is left out)."""
    out = []
    for name, (start, end), paths, halflife in itertools.product(SIGNALS, WINDOWS, PATH_COUNTS, HALFLIVES):
        end = pred_len if end is None else end
        try:
            check_signal(name, pred_len, paths, start, end)
        except KronosInputError:  # the grid skips what the signal refuses
            continue
        if paths <= max_paths:
            out.append(Candidate(name, start, end, paths, halflife))
    return out


def daily_scores(model, dataset, segment, grid: list[Candidate], shard: tuple[int, int] = (0, 1)
                 ) -> tuple[dict[str, pd.Series], dict[str, int]]:
    """Each candidate's scores on every day of ``segment`` (every ``shard[1]``-th from the ``shard[0]``-th),
    computed as KronosModel.predict computes them, from the first m cached paths; and the paths the price limit
    clipped / the floor changed at the largest m."""
    raw = {key: [] for key in {(c.signal, c.start, c.end, c.paths) for c in grid}}
    counts = {"paths": 0, "clipped": 0, "floored": 0}
    top = max(c.paths for c in grid)
    for day in model.day_forecasts(dataset, segment, shard):
        limit = price_limits(day.instruments, model.price_limit)
        index = pd.MultiIndex.from_product([[day.day], day.instruments], names=["datetime", "instrument"])
        counted = False
        for (name, start, end, paths) in raw:
            values, window = score_day(name, day.paths[:, :paths], day.last_close, start, end, day.history, limit)
            raw[name, start, end, paths].append(pd.Series(values, index=index))
            if paths == top and not counted:  # the floor and the limit act on whole paths, whatever the signal
                counted = True
                counts["paths"] += day.paths.shape[0] * paths
                counts["clipped"] += window.clipped
                counts["floored"] += window.floored
    joined = {key: pd.concat(parts).sort_index() for key, parts in raw.items()}
    return ({c.name: smooth_scores(joined[c.signal, c.start, c.end, c.paths], c.halflife) for c in grid}, counts)


def valid_row(score: pd.Series, label: pd.Series, k: int) -> dict[str, float]:
    metrics = signal_metrics(score, label)
    top = topk_excess(score, label, k)
    return {**{name: metrics[name] for name in ("IC", "IC t", "RankIC", "RankIC t", "top quintile spread (daily)",
                                                "top quintile t", "long-short spread (daily)", "long-short t")},
            "top-k excess (daily)": float(top["excess"].mean()), "top-k t": mean_t(top["excess"])["t"],
            "top-k turnover": float(top["turnover"].mean())}


def backtests(scores: dict[str, pd.Series], names: list[str], config: dict, start: str, end: str,
              folder: Path) -> dict[str, pd.DataFrame]:
    """Each named candidate's backtest report, kept in ``folder`` (one CSV each, written whole) so that a killed
    run backtests only what is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    reports = {}
    for name in tqdm(list(dict.fromkeys(names)), desc="valid backtests"):
        path = folder / f"{name.replace(' ', '_')}.csv"
        if path.exists():
            reports[name] = pd.read_csv(path, index_col=0, parse_dates=True)
            continue
        reports[name] = backtest(scores[name], config, start, end)
        atomic_write_text(path, reports[name].to_csv())
        print(f"backtest {name}: {book(reports[name])[CRITERION] * 1e4:.2f} bp/day with cost", flush=True)
    return reports


def choose(args) -> None:
    work = Path(args.work).resolve()
    model, dataset, config = fit_workflow_model(work, args.provider)
    out = work / "signals"
    out.mkdir(exist_ok=True)
    spec, sampling = model.forecast, model.sampling
    start, end = (pd.Timestamp(d) for d in dataset.segments["valid"])
    model.sampling = dataclasses.replace(sampling, sample_count=args.max_paths)
    grid = candidates(spec.pred_len, args.max_paths)
    print(f"valid {start.date()}..{end.date()}: {len(grid)} candidates from {args.max_paths} paths "
          f"(T={sampling.T:g}, top_p={sampling.top_p:g}, seed {sampling.seed})", flush=True)
    began = time.perf_counter()
    sampled, cached = model.fill_cache(dataset, "valid")
    sample_s = time.perf_counter() - began
    print(f"sampled {sampled}, cached {cached} valid forecasts in {sample_s / 60:.1f} min", flush=True)
    scores, counts = daily_scores(model, dataset, "valid", grid)
    label = dataset.prepare("valid", col_set="label").iloc[:, 0]
    days = label.index.get_level_values("datetime").unique().sort_values()
    label = labels_inside_segment(label)
    topk = config["port_analysis_config"]["strategy"]["kwargs"]["topk"]
    rows = {c.name: {"segment": "valid", **dataclasses.asdict(c), **valid_row(scores[c.name], label, topk)}
            for c in grid}
    table = pd.DataFrame.from_dict(rows, orient="index")
    base = incumbent(spec.pred_len, sampling.sample_count).name
    last = str(label.index.get_level_values("datetime").max().date())
    reports = backtests(scores, [base, *table.index[eligible(table)]], config, str(start.date()), last,
                        out / "backtests")
    excess = {name: excess_with_cost(r) for name, r in reports.items()}
    table = table.join(pd.DataFrame.from_dict({name: book(r) for name, r in reports.items()}, orient="index"))
    choice = choose_signal(table, excess, base, last)
    record_path = Path(args.record)
    atomic_write_text(valid_table(record_path), table.to_csv())
    record = {"choice": choice.to_dict(), "candidate": dataclasses.asdict(_candidate(grid, choice.chosen)),
              "incumbent": base, "incumbent_candidate": dataclasses.asdict(_candidate(grid, base)),
              "sampling": dataclasses.asdict(sampling) | {"sample_count": args.max_paths},
              "valid": [str(days[0].date()), last], "paths": counts, "sampled": sampled, "sample_seconds": sample_s,
              "path_costs": path_costs(model, dataset, days[0]), "machine": machine()}
    atomic_write_text(record_path, json.dumps(record, indent=1, default=str))
    update_section("signal-choice", choice_report(table, choice, record, args))


def valid_table(record: Path) -> Path:
    """Where the valid table of the choice ``record`` is kept: beside it."""
    return record.with_name(f"{record.stem}_valid.csv")


def path_costs(model, dataset, day: pd.Timestamp) -> dict[str, float]:
    """Seconds to sample 1000 forecasts with each path count: one valid day's members sampled afresh (no cache)
    with the workflow's batch size. The prefill is shared across a forecast's paths, so cost grows less than m."""
    costs = {}
    for m in PATH_COUNTS:
        fresh = copy.copy(model)
        fresh.cache_dir, fresh.sampling = None, dataclasses.replace(model.sampling, sample_count=m)
        fresh.predict(dataset, slice(day, day))  # warm-up: data loading, first-call allocations
        began = time.perf_counter()
        n = len(fresh.predict(dataset, slice(day, day)))
        costs[str(m)] = 1000 * (time.perf_counter() - began) / n
    return costs


def report_only(args) -> None:
    """Rewrite the section from the recorded valid table and choice (the path costs measured if missing)."""
    work, record_path = Path(args.work).resolve(), Path(args.record)
    table = pd.read_csv(valid_table(record_path), index_col=0)
    record = json.loads(record_path.read_text())
    if "path_costs" not in record:
        model, dataset, _ = fit_workflow_model(work, args.provider)
        from qlib.data import D

        first = pd.Timestamp(D.calendar(start_time=record["valid"][0], end_time=record["valid"][1])[0])
        record["path_costs"] = path_costs(model, dataset, first)
        atomic_write_text(record_path, json.dumps(record, indent=1, default=str))
    choice = SignalChoice(**{k: v for k, v in record["choice"].items() if k not in ("margin_se", "nw_lag")})
    update_section("signal-choice", choice_report(table, choice, record, args))


def _candidate(grid: list[Candidate], name: str) -> Candidate:
    return next(c for c in grid if c.name == name)


def choice_report(table: pd.DataFrame, choice: SignalChoice, record: dict, args) -> str:
    """The section: what ran, the rule, the best backtested candidates (and the incumbent), the outcome."""
    shown = table[eligible(table)].sort_values(CRITERION, ascending=False).head(SHOWN)
    shown = pd.concat([shown, table.loc[[record["incumbent"]]]])
    shown = shown[~shown.index.duplicated()]
    sampling, pred_len = record["sampling"], int(table["end"].max())
    windows = ", ".join(f"{start}..{pred_len if end is None else end}" for start, end in WINDOWS)
    halflives = ", ".join("none" if h is None else f"{h:g}" for h in HALFLIVES)
    lines = [
        "## Signal choice on the valid segment (`python -m research.signals choose`)", "",
        f"The shipped workflow's Kronos (its preset and seed), {sampling['sample_count']} paths per forecast "
        f"sampled with T={sampling['T']:g}, top_p={sampling['top_p']:g} on every valid day {record['valid'][0]}.."
        f"{record['valid'][1]} (the last {LABEL_DAYS} valid days are left out: their label lies in test). "
        f"{len(table)} candidates: each signal x window (steps {windows}) x the first m of the paths "
        f"(m = {', '.join(map(str, sorted(set(table['paths']))))}) x half-life (trading days: {halflives}). "
        f"Rule (research/selection.py, fixed before the run): a challenger is eligible when its valid "
        f"{', '.join(ELIGIBILITY)} are all > 0; every eligible challenger and the incumbent `{record['incumbent']}` "
        f"go through Qlib's TopkDropout backtest of valid with the workflow's strategy and costs; the challenger with "
        f"the best mean daily excess with cost replaces the incumbent only if their paired daily difference has a "
        f"Newey-West t (lag {NW_LAG}) above {MARGIN_SE:g} (lenient: it is the best of many). Test was not read. "
        f"Of {record['paths']['paths']} sampled paths, {record['paths']['clipped']} had a daily move beyond the "
        f"price limit somewhere in their {pred_len} steps (clipped) and {record['paths']['floored']} a close at the "
        f"floor. Machine: {record['machine']}.", "",
        f"The {SHOWN} eligible candidates with the best valid book, and the incumbent (top-50: the daily top 50 over "
        f"the universe mean and its turnover, a book rebuilt daily, before cost; the backtest's TopkDropout 50/5 "
        f"replaces at most 5 names a day):", "",
        "| candidate | IC (t) | RankIC (t) | top quintile bp/day (t) | top-50 bp/day (t) | top-50 turnover "
        "| backtest excess with cost bp/day (t) | no cost bp/day | IR with cost | turnover |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in shown.iterrows():
        mark = " **(chosen)**" if name == choice.chosen else (" (incumbent)" if name == record["incumbent"] else "")
        tested = np.isfinite(row.get(CRITERION, np.nan))
        bt = (f"{1e4 * row[CRITERION]:.2f} ({row['excess with cost t']:.2f}) | "
              f"{1e4 * row['excess no cost (daily)']:.2f} | {row['IR with cost']:.2f} | "
              f"{100 * row['turnover (daily)']:.1f}%") if tested else "- | - | - | -"
        lines.append(f"| {name}{mark} | {row['IC']:.4f} ({row['IC t']:.2f}) | {row['RankIC']:.4f} "
                     f"({row['RankIC t']:.2f}) | {1e4 * row['top quintile spread (daily)']:.2f} "
                     f"({row['top quintile t']:.2f}) | {1e4 * row['top-k excess (daily)']:.2f} "
                     f"({row['top-k t']:.2f}) | {100 * row['top-k turnover']:.0f}% | {bt} |")
    costs = record["path_costs"]
    lines += ["", "What the paths cost (seconds to sample 1000 forecasts, one valid day's members, this machine): "
              + ", ".join(f"{m} paths {seconds:.1f} s" for m, seconds in costs.items()) + "."]
    lines += ["", f"{int(eligible(table).sum())} of {len(table)} candidates are eligible. Outcome: "
              f"**{choice.chosen}**: {choice.reason}"
              + (f" (challenger `{choice.challenger}`, paired difference {1e4 * choice.difference:.2f} bp/day)."
                 if choice.challenger else "."), "", all_candidates(record, Path(args.record))]
    return "\n".join(lines)


def all_candidates(record: dict, record_path: Path) -> str:
    """Where the whole valid table is: beside the choice record, unless the record was rebuilt from an earlier
    section (its ``reconstructed`` note), when only the rows shown remain."""
    if "reconstructed" in record:
        return (f"All candidates: the valid table of this choice was not kept (`{record_path.name}` was rebuilt "
                f"from this section's rows, as its `reconstructed` note says); the rows above are what remains.")
    return f"All candidates: `{valid_table(record_path).name}`, beside the choice record."


def test(args) -> None:
    work = Path(args.work).resolve()
    record = json.loads(require_choice(Path(args.record), "python -m research.signals").read_text())
    chosen, base = Candidate(**record["candidate"]), Candidate(**record["incumbent_candidate"])
    shipped = require_shipped_sampling(record["sampling"], ("T", "top_p", "top_k", "seed"),
                                       "python -m research.signals")
    model, dataset, config = fit_workflow_model(work, args.provider)
    model.sampling = dataclasses.replace(model.sampling, sample_count=max(chosen.paths, base.paths))
    model.fill_cache(dataset, "test")
    scores, counts = daily_scores(model, dataset, "test", [chosen, base] if chosen != base else [chosen])
    label = dataset.prepare("test", col_set="label").iloc[:, 0]
    start, end = dataset.segments["test"]
    backtest_end = config["port_analysis_config"]["backtest"]["end_time"]
    rows, excess = {}, {}
    for name, score in scores.items():
        report = backtest(score, config, start, backtest_end)
        excess[name] = excess_with_cost(report)
        rows[name] = {**signal_metrics(score, label), **book(report)}
    lines = ["## Signals on test (`python -m research.signals test`)", "",
             f"The choice recorded on valid (`{chosen.name}`; rule and valid table in the section above), sampled "
             f"with T={shipped['T']:g}, top_p={shipped['top_p']:g} (sampling seed {shipped['seed']}), scored on "
             f"test {start}..{end} beside the incumbent, with Qlib's backtest (workflow strategy and costs, to "
             f"{backtest_end}). t: Newey-West, lag {NW_LAG}. Paths clipped at the price limit: {counts['clipped']} "
             f"of {counts['paths']}; floored: {counts['floored']}. Machine: {machine()}.", "",
             "| signal | IC (t) | RankIC (t) | top quintile bp/day (t) | excess with cost bp/day (t) "
             "| excess with cost (ann.) | IR with cost | turnover |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['IC']:.4f} ({r['IC t']:.2f}) | {r['RankIC']:.4f} ({r['RankIC t']:.2f}) "
                     f"| {1e4 * r['top quintile spread (daily)']:.2f} ({r['top quintile t']:.2f}) "
                     f"| {1e4 * r[CRITERION]:.2f} ({r['excess with cost t']:.2f}) "
                     f"| {100 * r['excess with cost (ann.)']:.2f}% | {r['IR with cost']:.2f} "
                     f"| {100 * r['turnover (daily)']:.1f}% |")
    if len(rows) == 2:
        paired = paired_difference(excess[chosen.name], excess[base.name])
        ranked = paired_difference(*(daily_ic(scores[c.name], label, "spearman") for c in (chosen, base)))
        lines += ["", f"Chosen minus incumbent, daily excess with cost: {1e4 * paired['mean']:.2f} bp/day, "
                  f"t {paired['t']:.2f} over {paired['days']:.0f} days; daily RankIC {ranked['mean']:+.4f}, "
                  f"t {ranked['t']:.2f}."]
    update_section("signals", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("choose", "test"))
    parser.add_argument("--work", default=str(REPO / "outputs" / "signals"), help="where the workflow's model "
                        "is trained (runs/) and its forecasts cached (forecasts/)")
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    parser.add_argument("--record", default=str(HERE / "signal_choice.json"),
                        help="the choice made on valid (written by choose, read by test), its valid table beside it")
    parser.add_argument("--max-paths", type=int, default=max(PATH_COUNTS), help="paths sampled per valid forecast")
    parser.add_argument("--report-only", action="store_true", help="with choose: rewrite the RESULTS.md section "
                        "from the recorded valid table and choice")
    args = parser.parse_args()
    if args.report_only and args.phase != "choose":
        parser.error("--report-only rewrites the choice's section: use it with choose")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.report_only and args.phase == "choose":
        report_only(args)
    else:
        choose(args) if args.phase == "choose" else test(args)


if __name__ == "__main__":
    main()
