"""Put recorded qrun experiments side by side: a table of signal and portfolio metrics, a PNG of cumulative
excess returns, and the training curves of each run that recorded them (Kronos: <experiment>_training.png).

    python scripts/compare.py                          # kronos_csi300 vs lightgbm_csi300 in ./mlruns.db
    python scripts/compare.py --experiments kronos_csi300 lightgbm_csi300 --out results/compare
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kronos_qlib.errors import ConfigError
from kronos_qlib.evaluation import (comparison_table, format_table, init_recorder_store, load_run,
                                    plot_cumulative_excess, plot_training_curves, signal_correlation)
from kronos_qlib.files import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlflow-uri", default="sqlite:///mlruns.db", help="the exp_manager uri of the workflows")
    parser.add_argument("--experiments", nargs="+", default=["kronos_csi300", "lightgbm_csi300"])
    parser.add_argument("--out", default="results/compare", help="folder for comparison.md/.csv and the PNG")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")

    try:
        init_recorder_store(args.mlflow_uri)
        runs = [load_run(name) for name in args.experiments]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(runs)
    atomic_write_text(out / "comparison.csv", table.to_csv())
    text = format_table(table)
    if len(runs) == 2:
        corr = signal_correlation(*runs)
        text += f"\n\nDaily rank correlation of the two signals: mean {corr.mean():.3f} over {len(corr)} days."
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


if __name__ == "__main__":
    sys.exit(main())
