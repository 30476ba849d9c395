"""kronos-qlib: the Kronos K-line foundation model as a Qlib plugin."""
from .errors import CheckpointError, ConfigError, KronosInputError
from .inference import KronosPredictor
from .model import Kronos, KronosTokenizer

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConfigError", "Kronos", "KronosInputError", "KronosPredictor", "KronosTokenizer"]
