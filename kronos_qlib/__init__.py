"""kronos-qlib: the Kronos K-line foundation model as a Qlib plugin.

``KronosModel`` and ``KronosBarsHandler`` (the Qlib integration, usable from a qrun YAML as
``module_path: kronos_qlib``) are imported on first use, so that the networks load without importing Qlib.
"""
from .errors import CheckpointError, ConfigError, KronosInputError, TrainingError
from .inference import ForecastSpec, KronosPredictor, Sampling
from .model import Kronos, KronosTokenizer

__version__ = "0.1.0"
__all__ = ["CheckedAlpha158", "CheckedAlpha360", "CheckpointError", "ConfigError", "ForecastSpec", "Kronos",
           "KronosAlpha158", "KronosBarsHandler", "KronosInputError", "KronosModel", "KronosPredictor",
           "KronosTokenizer", "Sampling", "TrainingError"]


def __getattr__(name: str):
    if name in ("KronosModel", "KronosBarsHandler", "CheckedAlpha158", "CheckedAlpha360", "KronosAlpha158"):
        from . import integration

        return getattr(integration, name)
    raise AttributeError(f"module 'kronos_qlib' has no attribute '{name}'")
