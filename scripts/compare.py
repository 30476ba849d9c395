"""Put recorded qrun experiments side by side: a table of signal and portfolio metrics (each daily mean with its
Newey-West t), a PNG of cumulative excess returns, and the training curves of each run that recorded them
(Kronos: <experiment>_training.png).
When both the --signal and the --control runs are among them: the daily rank correlation of the two signals and
the signal's partial IC and RankIC given the control (score and label both residualized on the control's
score per day, Newey-West t), i.e. what Kronos adds beyond LightGBM; and for every run, the paired test of its
daily RankIC and daily excess return with cost against the control's (mean difference, Newey-West t).

    python scripts/compare.py        # the shipped workflows' runs found in ./mlruns.db (Kronos paths and head, GRU,
                                     # LightGBM, the blends, ...)
    python scripts/compare.py --experiments kronos_csi300 lightgbm_csi300 ensemble_csi300 kronos_lightgbm_csi300
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kronos_qlib.errors import ConfigError
from kronos_qlib.evaluation import (NW_LAG, comparison_table, format_table, init_recorder_store, load_run,
                                    paired_difference, partial_ic, plot_cumulative_excess, plot_training_curves,
                                    signal_correlation)
from kronos_qlib.files import atomic_write_text

#: The experiments of the shipped workflows and scripts, compared by default when recorded.
SHIPPED = ["kronos_csi300", "kronos_head_csi300", "gru_alpha360_csi300", "lightgbm_csi300", "ensemble_csi300",
           "ensemble_valid_csi300", "ensemble_gru_csi300", "ensemble_head_csi300", "ensemble_head_gru_csi300",
           "kronos_lightgbm_csi300"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlflow-uri", default="sqlite:///mlruns.db", help="the exp_manager uri of the workflows")
    parser.add_argument("--experiments", nargs="+", default=None,
                        help=f"runs to compare (default: those of {', '.join(SHIPPED)} that are recorded)")
    parser.add_argument("--out", default="results/compare", help="folder for comparison.md/.csv and the PNG")
    parser.add_argument("--signal", default="kronos_csi300", help="the run whose added value is measured")
    parser.add_argument("--control", default="lightgbm_csi300", help="the run it is measured beyond")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")

    try:
        init_recorder_store(args.mlflow_uri)
        runs = [load_run(name) for name in args.experiments] if args.experiments else recorded(SHIPPED)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(runs)
    atomic_write_text(out / "comparison.csv", table.to_csv())
    text = format_table(table) + f"\n\nt: the Newey-West t of the daily mean (lag {NW_LAG})."
    by_name = {run.experiment: run for run in runs}
    if {args.signal, args.control} <= set(by_name) and args.signal != args.control:
        signal, control = by_name[args.signal], by_name[args.control]
        corr = signal_correlation(signal, control)
        partial = partial_ic(signal.pred.iloc[:, 0], control.pred.iloc[:, 0], signal.label.iloc[:, 0])
        text += (f"\n\nDaily rank correlation of {args.signal} with {args.control}: mean {corr.mean():.3f} over "
                 f"{len(corr)} days.\n{args.signal} beyond {args.control} (score and label residualized on its "
                 f"score per day; t: Newey-West, lag {NW_LAG}): "
                 + ", ".join(f"{key} {value:.4f}" for key, value in partial.items()) + ".")
    if args.control in by_name:
        text += "\n\n" + paired_lines(runs, by_name[args.control])
    atomic_write_text(out / "comparison.md", text + "\n")
    plot_cumulative_excess(runs, out / "cumulative_excess.png")
    written = [out / "comparison.md", out / "comparison.csv", out / "cumulative_excess.png"]
    for run in runs:
        if not run.curves.empty:
            written.append(out / f"{run.experiment}_training.png")
            plot_training_curves(run, written[-1])
    print(text)
    print(f"\nwritten: {', '.join(map(str, written))}")
    return 0


def recorded(names: list[str]) -> list:
    """The runs of ``names`` that the store holds; the others are named on stderr. None at all is an error."""
    runs, missing = [], []
    for name in names:
        try:
            runs.append(load_run(name))
        except ConfigError:
            missing.append(name)
    if missing:
        print(f"not recorded here, left out: {', '.join(missing)}", file=sys.stderr)
    if not runs:
        raise ConfigError(f"none of {', '.join(names)} is recorded in this store: run the workflows first")
    return runs


def paired_lines(runs: list, control) -> str:
    """Each run against ``control``, day by day: the mean daily difference of RankIC and of excess return with
    cost, each with its Newey-West t (the runs share one test period, so only a paired test can say A beats B)."""
    lines = [f"Paired against {control.experiment}, day by day (mean daily difference; t: Newey-West, lag {NW_LAG}):",
             "", "| run | RankIC difference (t) | excess with cost, bp/day (t) | days |", "|---|---|---|---|"]
    for run in runs:
        if run is control:
            continue
        rank_ic = paired_difference(run.rank_ic, control.rank_ic)
        excess = paired_difference(run.excess_return(), control.excess_return())
        lines.append(f"| {run.experiment} | {rank_ic['mean']:+.4f} ({rank_ic['t']:.2f}) | "
                     f"{1e4 * excess['mean']:+.2f} ({excess['t']:.2f}) | {excess['days']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
