"""The LightGBM baseline's handler: Qlib's Alpha158 after the same data check as the Kronos workflow."""
from __future__ import annotations

from qlib.config import C
from qlib.contrib.data.handler import Alpha158

from ..data import check_provider
from .handler import check_bars_data


class CheckedAlpha158(Alpha158):
    """Alpha158, unchanged, whose data folder and dates are checked first, so both workflows of a comparison stop
    at start, by name, on data that cannot serve them (``benchmark`` and ``backtest_end`` are only checked)."""

    def __init__(self, instruments: str = "csi300", start_time=None, end_time=None, freq: str = "day",
                 benchmark: str | None = None, backtest_end=None, **kwargs):
        check_bars_data(check_provider(C.dpm.get_data_uri(freq)), instruments, start_time, end_time, 0, benchmark,
                        backtest_end)
        super().__init__(instruments=instruments, start_time=start_time, end_time=end_time, freq=freq, **kwargs)
