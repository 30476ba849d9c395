"""Cached forecasts read back beside what happened: the paths of a forecast cache folder and the realized
closes they are scored on (:mod:`.forecast_scores`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, KronosInputError
from ..features import CLOSE
from ..inference.forecast_cache import day_files, read_day


@dataclass
class ForecastSet:
    """Every cached forecast of a date range, one row each."""

    dates: pd.DatetimeIndex  # (n,) the forecast day t
    instruments: np.ndarray  # (n,) str
    closes: np.ndarray  # (n, sample_count, pred_len) the paths' closes, price units
    last_close: np.ndarray  # (n,) the close of t
    key: dict  # the cache's key.json

    @property
    def sample_count(self) -> int:
        return self.closes.shape[1]

    @property
    def pred_len(self) -> int:
        return self.closes.shape[2]

    def members_only(self, spans: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]], market: str) -> ForecastSet:
        """The forecasts of instruments that were members of ``market`` on their day (``spans`` as
        :func:`kronos_qlib.data.membership` returns them)."""
        keep = np.zeros(len(self.dates), dtype=bool)
        for inst, periods in spans.items():
            mine = self.instruments == inst
            for start, end in periods:
                keep |= mine & (self.dates >= start) & (self.dates <= end)
        if not keep.any():
            raise KronosInputError(f"none of the {len(keep)} forecasts is of a member of '{market}' on its day")
        return ForecastSet(self.dates[keep], self.instruments[keep], self.closes[keep], self.last_close[keep],
                           self.key)


def read_forecast_cache(folder: str | Path, start: str | None = None, end: str | None = None) -> ForecastSet:
    """The forecasts of a cache folder (``<cache_dir>/<digest>/``) whose day lies in [start, end]."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"forecast cache folder '{folder}' does not exist")
    if not (folder / "key.json").is_file():
        raise ConfigError(f"'{folder}' is not a forecast cache folder: it has no key.json")
    try:
        key = json.loads((folder / "key.json").read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"'{folder / 'key.json'}' is not valid JSON: {err}") from err
    found = day_files(folder, start, end)
    days, files = pd.DatetimeIndex([day for day, _ in found]), [f for _, f in found]
    if not files:
        raise KronosInputError(f"'{folder}' holds no forecast day files (YYYY-MM-DD.npz) between "
                               f"{start or 'the first'} and {end or 'the last'} day")
    parts = [_read_day(f) for f in files]
    shapes = {p[1].shape[1:] for p in parts}
    if len(shapes) > 1:
        raise KronosInputError(f"the day files of '{folder}' mix path shapes (sample_count, pred_len): "
                               f"{sorted(shapes)}")
    return ForecastSet(dates=pd.DatetimeIndex(np.repeat(days.values, [len(p[0]) for p in parts])),
                       instruments=np.concatenate([p[0] for p in parts]),
                       closes=np.concatenate([p[1] for p in parts]),
                       last_close=np.concatenate([p[2] for p in parts]), key=key)


def _read_day(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instruments, the paths' closes, last closes) of one day file."""
    instruments, paths, last_close = read_day(path)
    return instruments, paths[..., CLOSE].astype(np.float64), last_close


def load_closes(forecasts: ForecastSet, history: int) -> pd.DataFrame:
    """Daily closes (trading calendar x instrument, NaN where not traded) from the initialized Qlib provider:
    ``2 * history`` trading days before the first forecast day up to ``pred_len`` days after the last."""
    from qlib.data import D

    from ..data.qlib_source import history_start, load_bars

    calendar = pd.DatetimeIndex(D.calendar(start_time=history_start(forecasts.dates.min(), history)))
    stop = calendar.searchsorted(forecasts.dates.max(), side="right") + forecasts.pred_len
    calendar = calendar[:stop]
    bars = load_bars(sorted(set(forecasts.instruments)), calendar[0], calendar[-1])
    return bars["close"].unstack("instrument").reindex(calendar)


def realized_closes(closes: pd.DataFrame, forecasts: ForecastSet) -> tuple[np.ndarray, np.ndarray]:
    """(n, pred_len) realized close at each step (NaN: not scorable) and a bool mask of the steps past the
    calendar's last day. Step k is the k-th trading day of ``closes.index`` after t."""
    calendar = pd.DatetimeIndex(closes.index)
    pos = calendar.get_indexer(forecasts.dates)
    if (pos < 0).any():
        day = forecasts.dates[int(np.argmax(pos < 0))]
        raise KronosInputError(f"forecast day {day.date()} is not a trading day of the provider's calendar")
    cols = closes.columns.get_indexer(forecasts.instruments)
    target = pos[:, None] + np.arange(1, forecasts.pred_len + 1)[None, :]
    beyond = target >= len(calendar)
    values = np.column_stack([closes.to_numpy(float), np.full(len(calendar), np.nan)])  # column -1: not loaded
    realized = values[np.minimum(target, len(calendar) - 1), cols[:, None]]
    realized[beyond] = np.nan
    at_t = values[pos, cols]
    wrong = ~np.isclose(at_t, forecasts.last_close, rtol=1e-4)
    if wrong.any():
        i = int(np.argmax(wrong))
        raise KronosInputError(
            f"the provider's close of {forecasts.instruments[i]} on {forecasts.dates[i].date()} is {at_t[i]}, the "
            f"cache's last_close {forecasts.last_close[i]}: the forecasts were made from other data (--provider)")
    return realized, beyond


