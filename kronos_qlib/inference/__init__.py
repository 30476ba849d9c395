"""Forecasting with a tokenizer + predictor pair: settings, sampling, the KV-cached generator, the DataFrame API."""
from .generate import sample_paths
from .predictor import KronosPredictor, default_device
from .sampling import filter_logits, sample_token, series_key
from .spec import ForecastSpec, Sampling

__all__ = ["ForecastSpec", "KronosPredictor", "Sampling", "default_device", "filter_logits", "sample_paths",
           "sample_token", "series_key"]
