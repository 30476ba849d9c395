"""Cross-sectional alpha signals from sampled forecast paths."""
from .paths import (SIGNALS, check_signal, compute_signal, prepared_window, score_day, score_window,
                    winsorize)
from .price_limits import check_price_limit, price_limits
from .smoothing import smooth_scores

__all__ = ["SIGNALS", "check_signal", "compute_signal", "prepared_window", "score_day", "score_window", "winsorize",
           "check_price_limit", "price_limits", "smooth_scores"]
