"""Qlib integration: the bars handler, the Model subclass and its forecast cache.

Importing it (qrun does, through ``module_path: kronos_qlib``) lets kronos_qlib's log lines appear where Qlib's do.
"""
from ..logs import follow_qlib_logging
from .checked_handlers import CheckedAlpha158, CheckedAlpha360
from ..inference.forecast_cache import ForecastCache
from .handler import KronosBarsHandler
from .kronos_factors import KronosAlpha158
from .model import KronosModel

follow_qlib_logging()

__all__ = ["CheckedAlpha158", "CheckedAlpha360", "ForecastCache", "KronosAlpha158", "KronosBarsHandler", "KronosModel"]
