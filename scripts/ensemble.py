"""Combine two recorded runs (Kronos and a baseline: LightGBM by default, or GRU) into one signal and backtest it.

The signal is w * g(Kronos) + (1 - w) * g(baseline), g the daily rank-gauss score, on every row the baseline scores
(Kronos's part neutral, 0, where it has no score), applied to the recorded test signals and recorded in a new run of
--experiment with Qlib's SigAnaRecord and PortAnaRecord (the backtest settings of the baseline's workflow).

The weight is the equal blend w = 0.5, declared in advance, unless --weight says otherwise. A weight chosen by
valid RankIC is in-sample for both models (LightGBM early-stops on the valid segment, Kronos picks its checkpoint
there), so it is only an option: --weight valid takes the weight of 0, 0.05, ..., 1 with the best valid mean
RankIC, each run's recorded model (params.pkl) predicting the valid segment of its workflow's dataset (the workflow
file is rendered with the current environment, as qrun renders it: run this with the variables the runs had). A
number needs no valid predictions: no Kronos forecast is sampled. See kronos_qlib/integration/ensemble.py.

    python scripts/ensemble.py                                   # ./mlruns.db -> experiment ensemble_csi300
    python scripts/ensemble.py --weight 0                        # LightGBM's ranking, recorded as an ensemble run
    python scripts/ensemble.py --weight valid --valid-from 2019-07-01   # chosen on valid (in-sample, optimistic)
    env $(xargs < workflows/smoke.env) python scripts/ensemble.py   # after the smoke runs of both workflows
    python scripts/compare.py --experiments kronos_csi300 lightgbm_csi300 ensemble_csi300
    python scripts/ensemble.py --baseline gru_alpha360_csi300 --baseline-workflow workflows/gru_alpha360_csi300.yaml \
        --experiment ensemble_gru_csi300                          # Kronos with the model that reads the same bars
    python scripts/ensemble.py --kronos kronos_head_csi300 --kronos-workflow workflows/kronos_head_csi300.yaml \
        --experiment ensemble_head_csi300                         # Kronos's return head with LightGBM (or GRU)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from kronos_qlib.errors import ConfigError, KronosInputError
from kronos_qlib.evaluation import init_recorder_store, load_run
from kronos_qlib.qrun import WORKFLOWS, load_workflow


def valid_predictions(experiment: str, recorder_id: str, config: dict, workflow: Path, valid_from: str | None
                      ) -> tuple[pd.Series, object, slice]:
    """The recorded model's scores on the valid segment of the workflow's dataset (from ``valid_from`` on, when
    given), the dataset and the date range."""
    from qlib.utils import init_instance_by_config
    from qlib.workflow import R

    model = R.get_recorder(recorder_id=recorder_id, experiment_name=experiment).load_object("params.pkl")
    dataset = init_instance_by_config(config["task"]["dataset"])
    if "valid" not in dataset.segments:
        raise ConfigError(f"the dataset of {workflow} has no valid segment to choose the weight on")
    start, end = (pd.Timestamp(day) for day in dataset.segments["valid"])
    if valid_from is not None:
        if not start <= pd.Timestamp(valid_from) <= end:
            raise ConfigError(f"--valid-from {valid_from} lies outside the valid segment {start.date()}..{end.date()} "
                              f"of {workflow}")
        start = pd.Timestamp(valid_from)
    segment = slice(start, end)
    return model.predict(dataset, segment), dataset, segment


def parse_weight(text: str) -> float | None:
    """--weight: a number in [0, 1], or None for "valid" (chosen on the valid segment)."""
    if text == "valid":
        return None
    try:
        weight = float(text)
    except ValueError:
        weight = None
    if weight is None or not 0.0 <= weight <= 1.0:
        raise ConfigError(f"--weight must be 'valid' or a number in [0, 1], got {text!r}")
    return weight


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlflow-uri", default="sqlite:///mlruns.db", help="the exp_manager uri of the workflows")
    parser.add_argument("--kronos", default="kronos_csi300", help="experiment of the Kronos run")
    parser.add_argument("--baseline", default="lightgbm_csi300", help="experiment of the baseline run")
    parser.add_argument("--kronos-workflow", default=str(WORKFLOWS / "kronos_csi300.yaml"))
    parser.add_argument("--baseline-workflow", default=str(WORKFLOWS / "lightgbm_csi300.yaml"))
    parser.add_argument("--experiment", default="ensemble_csi300", help="where the combined run is recorded")
    parser.add_argument("--weight", help="Kronos's weight: a number in [0, 1] (default: the equal blend, declared "
                        "in advance because a weight chosen on valid is in-sample for both models), or 'valid' to "
                        "choose it by valid mean RankIC")
    parser.add_argument("--valid-from", help="with --weight valid, choose on the valid segment from this day only "
                        "(default: all of it; a shorter range samples fewer Kronos forecasts)")
    args = parser.parse_args(argv)

    from qlib.data.dataset.handler import DataHandlerLP

    from kronos_qlib.integration.ensemble import (DECLARED_WEIGHT, check_same_dates, choose_weight, combine,
                                                  record_ensemble)

    try:
        weight = DECLARED_WEIGHT if args.weight is None else parse_weight(args.weight)
        if weight is not None and args.valid_from is not None:
            print(f"note: --valid-from is unused: Kronos's weight is declared ({weight}), not chosen on valid",
                  file=sys.stderr)
        workflows = {"kronos": Path(args.kronos_workflow), "baseline": Path(args.baseline_workflow)}
        configs = {name: load_workflow(path) for name, path in workflows.items()}
        segments = {name: config["task"]["dataset"]["kwargs"]["segments"] for name, config in configs.items()}
        if segments["kronos"] != segments["baseline"]:
            raise ConfigError(f"{workflows['kronos']} and {workflows['baseline']} render different segments "
                              f"({segments['kronos']} vs {segments['baseline']}): render both with the same variables")
        init_recorder_store(args.mlflow_uri, configs["baseline"]["qlib_init"]["provider_uri"])
        runs = {"kronos": load_run(args.kronos), "baseline": load_run(args.baseline)}
        names = {key: f"{run.experiment} (run {run.recorder_id})" for key, run in runs.items()}
        test = {key: run.pred.iloc[:, 0] for key, run in runs.items()}
        check_same_dates(test["kronos"], test["baseline"], names["kronos"], names["baseline"])
        recorded = pd.DatetimeIndex(test["baseline"].index.get_level_values("datetime").unique())
        start, end = (pd.Timestamp(day) for day in segments["baseline"]["test"])
        if recorded.min() < start or recorded.max() > end:
            raise ConfigError(f"the recorded runs score {recorded.min().date()}..{recorded.max().date()}, outside the "
                              f"test segment {start.date()}..{end.date()} the workflows render now: run this with "
                              f"the date variables the runs had")
        params = {"ensemble.kronos_run": names["kronos"], "ensemble.baseline_run": names["baseline"],
                  "ensemble.weight_rule": "declared" if weight is not None else "valid"}
        if weight is None:
            valid = {}
            for key in ("kronos", "baseline"):
                valid[key], dataset, segment = valid_predictions(runs[key].experiment, runs[key].recorder_id,
                                                                 configs[key], workflows[key], args.valid_from)
            label = dataset.prepare(segment, col_set="label", data_key=DataHandlerLP.DK_R).iloc[:, 0]
            choice = choose_weight(valid["kronos"], valid["baseline"], label)
            weight = choice.weight
            params["ensemble.chosen_on"] = f"mean RankIC on {segment.start.date()}..{segment.stop.date()} (valid)"
        combination = combine(test["kronos"], test["baseline"], runs["baseline"].experiment)
        params.update({"ensemble.kronos_weight": weight, "ensemble.kronos_non_finite": combination.non_finite["kronos"],
                       "ensemble.baseline_non_finite": combination.non_finite["baseline"]})
        recorder_id = record_ensemble(args.experiment, combination.score(weight), runs["baseline"].label,
                                      configs["baseline"]["port_analysis_config"], params)
    except (ConfigError, KronosInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if params["ensemble.weight_rule"] == "valid":
        print(choice.valid_rank_ic.to_string(float_format=lambda v: f"{v:.4f}"))
        how = f"chosen on valid: best valid mean RankIC {choice.valid_rank_ic.max():.4f}, in-sample for both models"
    else:
        how = "declared in advance"
    print(f"\nKronos weight {weight:.2f} ({how}); recorded as run {recorder_id} of experiment '{args.experiment}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
