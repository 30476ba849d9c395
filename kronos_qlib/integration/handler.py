"""KronosBarsHandler: the raw daily bars Kronos reads, with history before the first segment."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from qlib.config import C
from qlib.data import D
from qlib.data.dataset.handler import DataHandlerLP

from ..data import check_provider, membership
from ..data.check import check_data
from ..data.qlib_source import Spans, derive_missing_amount, history_start
from ..errors import ConfigError
from ..features import BAR_COLUMNS

logger = logging.getLogger(__name__)

#: Qlib's usual label: the return from the next close to the one after (a signal at t trades at t + 1).
DEFAULT_LABEL = "Ref($close, -2) / Ref($close, -1) - 1"


class KronosBarsHandler(DataHandlerLP):
    """Raw open, high, low, close, volume, amount ("feature") and a label, for :class:`KronosModel`.

    Bars are loaded for every instrument that belongs to the market ``instruments`` at some point of
    [start_time, end_time], over the whole range and including days before it joined: Qlib's market filter
    would drop those, but they are legitimate context. The point-in-time membership is kept in ``universe``
    so the model only scores members. Loading starts ``history`` trading days (twice over, for suspensions)
    before ``start_time`` so the first day of a segment has its context.

    ``$amount`` is NaN where the provider has none; :meth:`bars` derives it as volume x mean(OHLC).
    ``fit_start_time`` / ``fit_end_time`` are accepted so Alpha158-style handler configs can be reused; no
    processor is fitted (the model normalizes each context itself). ``benchmark`` and ``backtest_end`` are only
    checked (:func:`check_bars_data`), so a run stops at start, by name, rather than deep inside Qlib.
    """

    def __init__(self, instruments: str | list[str] = "csi300", start_time=None, end_time=None, history: int = 90,
                 freq: str = "day", label: str = DEFAULT_LABEL, fit_start_time=None, fit_end_time=None,
                 benchmark: str | None = None, backtest_end=None, **kwargs):
        try:
            provider = C.dpm.get_data_uri(freq)
        except KeyError as err:
            raise ConfigError("Qlib is not initialized: call qlib.init(provider_uri=...) first") from err
        if history < 0:
            raise ConfigError(f"history must be >= 0 trading days, got {history}")
        provider = check_provider(provider)
        if freq == "day":
            check_bars_data(provider, instruments, start_time, end_time, history, benchmark, backtest_end)
        if isinstance(instruments, str):
            self.universe: Spans = membership(instruments, start_time, end_time)
        else:
            calendar = D.calendar(start_time=start_time, end_time=end_time, freq=freq)
            self.universe = {code: [(pd.Timestamp(calendar[0]), pd.Timestamp(calendar[-1]))] for code in instruments}
        self.market = instruments if isinstance(instruments, str) else "custom"
        loader = {
            "class": "QlibDataLoader",
            "kwargs": {"config": {"feature": ([f"${c}" for c in BAR_COLUMNS], list(BAR_COLUMNS)),
                                  "label": ([label], ["LABEL0"])},
                       "freq": freq},
        }
        super().__init__(instruments=sorted(self.universe), start_time=history_start(start_time, history, freq),
                         end_time=end_time,
                         data_loader=loader, **kwargs)

    def bars(self, end: str | pd.Timestamp) -> pd.DataFrame:
        """All raw bars up to ``end``, indexed (instrument, datetime), columns BAR_COLUMNS."""
        frame = self.fetch(slice(None, pd.Timestamp(end)), col_set="feature", data_key=DataHandlerLP.DK_R)
        return derive_missing_amount(frame.swaplevel().sort_index().astype("float64"))


def check_bars_data(provider: Path, instruments: str | list[str], start_time, end_time, history: int,
                    benchmark: str | None = None, backtest_end=None) -> None:
    """Stop with the data check's errors (:func:`kronos_qlib.data.check.check_data`) before Qlib fails deep
    inside; log its warnings."""
    report = check_data(provider, instruments, start_time, end_time, benchmark=benchmark, history=history,
                        backtest_end=backtest_end)
    for warning in report.warnings:
        logger.warning("Qlib data %s: %s", provider, warning)
    if not report.ok:
        raise ConfigError(f"the Qlib data folder {provider} cannot serve this run:\n"
                          + "\n".join(f"- {error}" for error in report.errors))
