"""Forecasting with a tokenizer + predictor pair: sampling, the KV-cached generator and the DataFrame API."""
from .generate import sample_paths
from .predictor import KronosPredictor, default_device
from .sampling import filter_logits, sample_token

__all__ = ["KronosPredictor", "default_device", "filter_logits", "sample_paths", "sample_token"]
