"""Rolling retraining of a Kronos workflow with Qlib's RollingGen and TrainerR: every `--step` trading days of the
test segment, the model is finetuned from the previous roll's weights on segments rolled forward by that step;
the rolls' test predictions are merged into one signal, analysed and backtested with the workflow's own records.

    python scripts/rolling.py --workflow workflows/kronos_csi300.yaml --step 60
    env $(xargs < workflows/smoke.env) python scripts/rolling.py --step 10       # tiny scale: two rolls

The dates, the preset, QLIB_DATA and KRONOS_CACHE come from the environment variables the workflow reads, as
under qrun. Run it where qrun would run (mlruns.db and runs/ are relative to the current folder).
"""
from __future__ import annotations

import argparse
import os
import sys

from kronos_qlib.errors import ConfigError, KronosInputError
from kronos_qlib.qrun import WORKFLOWS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", default=str(WORKFLOWS / "kronos_csi300.yaml"), help="a qrun workflow file")
    parser.add_argument("--step", type=int, default=60, help="trading days between refits (the test part of a roll)")
    parser.add_argument("--experiment", default=None,
                        help="experiment of the merged signal (default: <workflow experiment>_rolling); the rolls "
                             "go to <experiment>_rolls")
    parser.add_argument("--refit-epochs", type=int, default=None,
                        help="predictor epochs of each refit after the first roll (default: the workflow's)")
    parser.add_argument("--dry-run", action="store_true", help="print each roll's segments and stop")
    args = parser.parse_args(argv)
    if args.refit_epochs is not None and args.refit_epochs < 1:
        parser.error(f"--refit-epochs must be at least 1, got {args.refit_epochs}")

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per roll's artifact read
    from kronos_qlib.integration.rolling import plan_rolls, run_rolling

    refit = None if args.refit_epochs is None else {"predictor_training": {"epochs": args.refit_epochs}}
    try:
        if args.dry_run:
            _, tasks = plan_rolls(args.workflow, args.step)
            for k, task in enumerate(tasks):
                segments = task["dataset"]["kwargs"]["segments"]
                print(f"roll {k}: " + ", ".join(f"{split} {segments[split][0]:%Y-%m-%d}..{segments[split][1]:%Y-%m-%d}"
                                                for split in ("train", "valid", "test")))
            return 0
        run = run_rolling(args.workflow, step=args.step, experiment=args.experiment, refit=refit)
    except (ConfigError, KronosInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(run.roll_ids)} rolls in experiment {run.roll_experiment}; merged signal, signal analysis and "
          f"backtest in experiment {run.experiment}, recorder {run.recorder_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
