"""Bar features shared by inference and training: columns, time stamps and per-window normalization.

Both paths must compute these identically, or a finetuned model would see other inputs than it learned on.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import KronosInputError

PRICE_COLUMNS = ("open", "high", "low", "close")
BAR_COLUMNS = (*PRICE_COLUMNS, "volume", "amount")
CLOSE = BAR_COLUMNS.index("close")
#: Added to the standard deviation so a constant column (e.g. volume filled with 0) normalizes to 0.
STD_EPS = 1e-5


def as_datetimes(timestamps, name: str) -> pd.DatetimeIndex:
    """Timestamps as a strictly increasing DatetimeIndex; anything else is an error naming the position.

    Unsorted or repeated bars would give a plausible but wrong forecast, so they are refused, not sorted.
    """
    index = pd.Index(timestamps)
    if not pd.api.types.is_datetime64_any_dtype(index.dtype):
        raise KronosInputError(f"{name} must hold datetimes (datetime64 or pd.Timestamp), got dtype {index.dtype}")
    if index.hasnans:
        raise KronosInputError(f"{name} holds a missing timestamp (NaT) at position {int(np.argmax(index.isna()))}")
    index = pd.DatetimeIndex(index)
    not_after = np.flatnonzero(index[1:] <= index[:-1])
    if not_after.size:
        pos = int(not_after[0]) + 1
        raise KronosInputError(f"{name} must be strictly increasing: position {pos} ({index[pos]}) is not after "
                               f"position {pos - 1} ({index[pos - 1]})")
    return index


def time_features(timestamps: pd.DatetimeIndex) -> np.ndarray:
    """[minute, hour, weekday (Monday = 0), day, month] per timestamp, as float32 (n, 5)."""
    ts = pd.DatetimeIndex(timestamps)
    # calendar arithmetic on the wall clock's datetime64 values (numpy floors when it coarsens a unit): the same
    # integers as pandas' field accessors, several times faster, which a sampler fed DataFrames feels per series
    wall = (ts.tz_localize(None) if ts.tz is not None else ts).to_numpy()
    minutes = wall.astype("datetime64[m]").astype(np.int64)
    days, months = wall.astype("datetime64[D]"), wall.astype("datetime64[M]")
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    day = (days - months.astype("datetime64[D]")).astype(np.int64) + 1
    return np.stack([minutes % 60, minutes // 60 % 24, weekday, day, months.astype(np.int64) % 12 + 1],
                    axis=-1).astype(np.float32)


def amount_from_volume(bars: pd.DataFrame) -> pd.Series:
    """volume x mean(open, high, low, close): the usual stand-in for turnover where a source has none."""
    return bars["volume"] * bars[list(PRICE_COLUMNS)].mean(axis=1)


def complete_bars(df: pd.DataFrame, name: str = "df") -> pd.DataFrame:
    """The six bar columns of ``df``, filling what Kronos expects when volume or amount are absent.

    No volume: volume = amount = 0 (as the original). Volume without amount: amount = volume x mean(OHLC),
    the usual stand-in for turnover when a data source has none.
    """
    if not isinstance(df, pd.DataFrame):
        raise KronosInputError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in PRICE_COLUMNS if c not in df.columns]
    if missing:
        raise KronosInputError(f"{name} has no column(s) {missing}; it needs {list(PRICE_COLUMNS)} "
                               f"and optionally volume and amount")
    given = [*PRICE_COLUMNS, *(c for c in ("volume", "amount") if "volume" in df.columns and c in df.columns)]
    source = df[given]
    if source.shape[1] == len(given) and all(isinstance(t, np.dtype) and t.kind in "fiub" for t in source.dtypes):
        bars = source.astype(np.float64)  # plain numpy numbers: nothing to parse (the common case, and fast)
    else:
        bars = pd.DataFrame({c: _numeric(df, c, name) for c in given}, index=df.index)
    if "volume" not in given:
        bars["volume"] = 0.0
        bars["amount"] = 0.0
    elif "amount" not in given:
        bars["amount"] = amount_from_volume(bars)
    check_finite(bars.to_numpy(), name, df.index)
    return bars


def _numeric(df: pd.DataFrame, column: str, name: str) -> pd.Series:
    """A column as float64; a value that is no number (e.g. the text "abc") is an error naming column and row."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = (values.isna() & df[column].notna()).to_numpy()
    if bad.any():
        row = int(np.argmax(bad))
        raise KronosInputError(f"{name} has a non-numeric value {df[column].iloc[row]!r} in column '{column}' at "
                               f"row {df.index[row]!r} (position {row})")
    return values.astype(np.float64)


def check_finite(values: np.ndarray, name: str, rows=None) -> None:
    """Bars (..., n_bars, 6) must be finite; the error names the column and the row (its label if given)."""
    bad = ~np.isfinite(values)
    if bad.any():
        where = np.argwhere(bad)[0]
        *series, row, col = (int(i) for i in where)
        label = f"row {rows[row]!r} (position {row})" if rows is not None else f"position {row}"
        prefix = f"{name} {series[0]}" if series else name
        raise KronosInputError(f"{prefix} has a non-finite value ({values[tuple(where)]}) in column "
                               f"'{BAR_COLUMNS[col]}' at {label}")


def normalize(values: np.ndarray, clip: float, n_stats: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x - mean) / (std + eps) per column, clipped to +-clip, with statistics of the first ``n_stats`` rows.

    Returns (normalized float32, mean, std). Statistics come from the context rows only (all rows by
    default), so a window's normalization never sees its future.
    """
    context = values if n_stats is None else values[:n_stats]
    mean = context.mean(axis=0)
    std = context.std(axis=0)
    normed = np.clip((values - mean) / (std + STD_EPS), -clip, clip)
    return normed.astype(np.float32), mean, std


def denormalize(normed: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return normed * (std + STD_EPS) + mean
