"""Qlib integration: the bars handler, the Model subclass and its forecast cache."""
from .forecast_cache import ForecastCache
from .handler import KronosBarsHandler
from .model import KronosModel

__all__ = ["ForecastCache", "KronosBarsHandler", "KronosModel"]
