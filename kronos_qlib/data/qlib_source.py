"""Daily bars and point-in-time index membership from any Qlib provider."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..errors import ConfigError, KronosInputError
from ..features import BAR_COLUMNS, amount_from_volume

logger = logging.getLogger(__name__)

Spans = dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]


def check_provider(provider_uri: str | Path) -> Path:
    """The provider folder, resolved; a clear error, saying how to get one, if it is not a Qlib data folder."""
    path = Path(provider_uri).expanduser().resolve()
    get_data = f"python scripts/get_data.py --target {path}"
    if not path.is_dir():
        raise ConfigError(f"Qlib provider folder '{provider_uri}' does not exist: get CN daily data with "
                          f"`{get_data}`, or set QLIB_DATA to your Qlib data folder")
    if not (path / "calendars").is_dir() or not (path / "instruments").is_dir():
        raise ConfigError(f"'{provider_uri}' is not a Qlib data folder: it needs calendars/ and instruments/ "
                          f"(`{get_data} --force` replaces it with CN daily data)")
    return path


def init_qlib(provider_uri: str | Path, region: str = "cn", logging_level: int = logging.INFO) -> Path:
    """Initialize Qlib on ``provider_uri`` unless it already serves that folder (qrun initializes it first)."""
    import qlib
    from qlib.config import C

    path = check_provider(provider_uri)
    if not C.registered or Path(C.dpm.get_data_uri()).resolve() != path:
        qlib.init(provider_uri=str(path), region=region, logging_level=logging_level)
    return path


def membership(market: str, start: str | pd.Timestamp, end: str | pd.Timestamp) -> Spans:
    """Each instrument's membership spans of ``market`` that overlap [start, end], clipped to it."""
    from qlib.data import D

    try:
        spans = D.list_instruments(D.instruments(market), start_time=start, end_time=end, as_list=False)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"market '{market}' cannot be read from the Qlib provider: {err}") from err
    spans = {inst: [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in periods] for inst, periods in spans.items()
             if periods}
    if not spans:
        raise KronosInputError(f"market '{market}' has no instruments between {pd.Timestamp(start).date()} "
                               f"and {pd.Timestamp(end).date()}")
    return spans


def history_start(start: str | pd.Timestamp | None, bars: int, freq: str = "day") -> pd.Timestamp | None:
    """The trading day ``2 * bars`` days before ``start`` (None: the calendar's start).

    Twice the bars a context needs, so that a stock suspended for a while before ``start`` still finds most
    of its context; a stock suspended longer simply has fewer windows or forecasts until it trades enough.
    """
    from qlib.data import D

    if start is None:
        return None
    calendar = D.calendar(end_time=start, freq=freq)
    return pd.Timestamp(calendar[max(0, len(calendar) - 1 - 2 * bars)]) if len(calendar) else pd.Timestamp(start)


def load_bars(instruments: list[str], start: str | pd.Timestamp, end: str | pd.Timestamp) -> pd.DataFrame:
    """Daily open, high, low, close, volume, amount indexed by (instrument, datetime); suspended days NaN.

    ``$amount`` is used where the provider has it; where it is missing (many providers, including Qlib's
    own cn_data, have none) it is derived as volume x mean(open, high, low, close).
    """
    from qlib.data import D

    fields = [f"${c}" for c in BAR_COLUMNS]
    frame = D.features(instruments, fields, start_time=start, end_time=end, freq="day")
    if frame.empty:
        raise KronosInputError(f"the Qlib provider has no daily bars for {len(instruments)} instrument(s) between "
                               f"{pd.Timestamp(start).date()} and {pd.Timestamp(end).date()}")
    frame.columns = list(BAR_COLUMNS)
    return derive_missing_amount(frame.astype("float64")).sort_index()


def derive_missing_amount(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill a NaN amount of a traded bar with volume x mean(open, high, low, close)."""
    derived = frame["amount"].isna() & frame["volume"].notna()
    if derived.any():
        if frame["amount"].isna().all():
            logger.info("the provider has no $amount: using amount = volume x mean(OHLC)")
        frame = frame.copy()
        frame.loc[derived, "amount"] = amount_from_volume(frame.loc[derived])
    return frame
