"""Kept for the imports of earlier releases: the forecast-quality code lives in :mod:`kronos_qlib.evaluation`
(``forecasts``, ``baselines``, ``forecast_scores``, ``forecast_reports``)."""
from .evaluation.baselines import SAMPLED_BASELINES, past_log_returns, random_walk_paths  # noqa: F401
from .evaluation.forecast_reports import format_report, plot_coverage, plot_crps, plot_pit, write_report  # noqa: F401
from .evaluation.forecast_scores import (BAND_LEVELS, REFERENCE, ForecastQuality, band_coverage,  # noqa: F401
                                         band_order_statistics, calibrated_coverage, evaluate, fair_crps, pit_ranks)
from .evaluation.forecasts import ForecastSet, load_closes, read_forecast_cache, realized_closes  # noqa: F401
