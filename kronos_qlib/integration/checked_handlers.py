"""The baselines' handlers: Qlib's Alpha158 and Alpha360, unchanged, after the same data check as the Kronos
workflow, so every workflow of a comparison stops at start, by name, on data that cannot serve it."""
from __future__ import annotations

from qlib.config import C
from qlib.contrib.data.handler import Alpha158, Alpha360

from ..data import check_provider
from .handler import check_bars_data


class _DataChecked:
    """Runs the data check before the Qlib handler it is mixed into; ``benchmark`` and ``backtest_end`` are only
    checked."""

    def __init__(self, instruments: str = "csi300", start_time=None, end_time=None, freq: str = "day",
                 benchmark: str | None = None, backtest_end=None, **kwargs):
        check_bars_data(check_provider(C.dpm.get_data_uri(freq)), instruments, start_time, end_time, 0, benchmark,
                        backtest_end)
        super().__init__(instruments=instruments, start_time=start_time, end_time=end_time, freq=freq, **kwargs)


class CheckedAlpha158(_DataChecked, Alpha158):
    """Qlib's Alpha158 (hand-made factors, for LightGBM), after the data check."""


class CheckedAlpha360(_DataChecked, Alpha360):
    """Qlib's Alpha360 (the last 60 days of raw open, high, low, close, vwap and volume, each divided by the last
    close or volume: what Kronos reads, for GRU and the zoo's other deep models), after the data check. A
    provider without ``$vwap`` (as ../shared/cn_data) leaves its 60 VWAP columns NaN, which the workflow's Fillna
    sets to 0: the model then reads five of the six fields."""
