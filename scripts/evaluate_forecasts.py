"""Score cached Kronos forecast paths against what happened: band coverage, PIT, CRPS, median-path error and
hit rate by step, beside random-walk and zero-return baselines (see kronos_qlib/evaluation/forecast_scores.py).

    python scripts/evaluate_forecasts.py --cache ~/.cache/kronos_qlib/forecasts/<digest>
    python scripts/evaluate_forecasts.py --run kronos_csi300 --start 2020-01-01 --end 2020-12-31

Writes table.md, table.csv, coverage.png, pit.png and crps.png to --out and prints the table.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kronos_qlib.data import init_qlib, membership
from kronos_qlib.errors import ConfigError, KronosInputError
from kronos_qlib.evaluation import init_recorder_store
from kronos_qlib.evaluation.forecast_reports import format_report, write_report
from kronos_qlib.evaluation.forecast_scores import evaluate
from kronos_qlib.evaluation.forecasts import ForecastSet, load_closes, read_forecast_cache


def forecast_folder_of_run(experiment: str, recorder_id: str | None) -> Path:
    """The forecast cache folder of the KronosModel that a run (the latest finished one by default) recorded."""
    from qlib.workflow import R

    try:
        exp = R.get_exp(experiment_name=experiment, create=False)
        recorder = (exp.get_recorder(recorder_id=recorder_id, create=False) if recorder_id
                    else next(iter(exp.list_recorders(rtype="list", status="FINISHED")), None))
    except Exception as err:  # Qlib and MLflow raise several types for an unknown experiment or run
        raise ConfigError(f"no recorded experiment '{experiment}'"
                          f"{f' with run {recorder_id}' if recorder_id else ''} in the MLflow store: {err}") from err
    if recorder is None:
        raise ConfigError(f"experiment '{experiment}' has no finished run")
    try:
        model = recorder.load_object("params.pkl")
    except Exception as err:  # as above, for a missing artifact
        raise ConfigError(f"run {recorder.id} of '{experiment}' recorded no model (params.pkl): {err}") from err
    folder = getattr(model, "forecast_folder", None)
    if folder is None:
        raise ConfigError(f"run {recorder.id} of '{experiment}' recorded a {type(model).__name__}, not a KronosModel "
                          "that cached its forecasts (forecast_folder is unset: was cache_dir None?)")
    return Path(folder)


def forecasts_to_score(args: argparse.Namespace) -> ForecastSet:
    """The cached forecasts the arguments select, with Qlib initialized on their provider."""
    if args.run:
        init_recorder_store(args.mlflow_uri, args.provider)
        folder = forecast_folder_of_run(args.run, args.recorder_id)
    else:
        folder = Path(args.cache)
    forecasts = read_forecast_cache(folder, args.start, args.end)
    provider = args.provider or forecasts.key.get("provider")
    if provider is None:
        raise ConfigError(f"the key.json of '{folder}' names no Qlib provider: pass --provider")
    init_qlib(provider, logging_level=logging.WARNING)
    if args.market:
        spans = membership(args.market, forecasts.dates.min(), forecasts.dates.max())
        forecasts = forecasts.members_only(spans, args.market)
    return forecasts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cache", help="a forecast cache folder (<cache_dir>/<digest>/ holding key.json)")
    source.add_argument("--run", help="a recorded qrun experiment whose KronosModel cached its forecasts")
    parser.add_argument("--mlflow-uri", default="sqlite:///mlruns.db", help="the exp_manager uri of the workflows")
    parser.add_argument("--recorder-id", help="the run of --run (default: its latest finished run)")
    parser.add_argument("--provider", help="the Qlib data folder (default: the one the cache's key.json names)")
    parser.add_argument("--start", help="first forecast day scored (YYYY-MM-DD)")
    parser.add_argument("--end", help="last forecast day scored (YYYY-MM-DD)")
    parser.add_argument("--market", help="score only members of this Qlib market on each day (default: all)")
    parser.add_argument("--window", type=int, default=60, help="past traded days of the random-walk baselines")
    parser.add_argument("--min-history", type=int, default=20, help="fewest past returns a baseline needs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the baselines' draws and PIT tie-breaks")
    parser.add_argument("--out", default="results/forecast_quality", help="folder for the table and the PNGs")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")

    try:
        forecasts = forecasts_to_score(args)
        quality = evaluate(forecasts, load_closes(forecasts, args.window), window=args.window,
                           min_history=args.min_history, seed=args.seed)
    except (ConfigError, KronosInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    written = write_report(quality, args.out)
    print(format_report(quality))
    print(f"written: {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
