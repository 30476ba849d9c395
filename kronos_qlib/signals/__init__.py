"""Cross-sectional alpha signals from sampled forecast paths."""
from .paths import SIGNALS, compute_signal

__all__ = ["SIGNALS", "compute_signal"]
