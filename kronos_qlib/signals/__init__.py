"""Cross-sectional alpha signals from sampled forecast paths."""
from .paths import SIGNALS, check_signal, compute_signal

__all__ = ["SIGNALS", "check_signal", "compute_signal"]
