"""From a Qlib provider to train / valid / test window datasets, cached on disk by their settings."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, KronosInputError
from ..files import atomic_write
from .qlib_source import Spans, history_start, init_qlib, load_bars, membership
from ..inference.spec import ForecastSpec
from .windows import BarPanel, WindowDataset, window_starts

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CACHE_VERSION = 2  # bump when the processing below changes


@dataclass
class DataConfig:
    """Where the bars come from and which dates each split holds; the windows' shape is a
    :class:`~kronos_qlib.inference.ForecastSpec`, given beside it."""

    provider_uri: str = "~/.qlib/qlib_data/cn_data"
    region: str = "cn"
    market: str = "csi300"
    train: tuple[str, str] = ("2010-01-01", "2017-12-31")
    valid: tuple[str, str] = ("2018-01-01", "2019-12-31")
    test: tuple[str, str] = ("2020-01-01", "2022-12-30")
    #: Folder for processed data; None disables the cache.
    cache_dir: str | None = "~/.cache/kronos_qlib"
    splits: tuple[str, ...] = field(default=SPLITS)

    def date_range(self, split: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        start, end = (pd.Timestamp(d) for d in getattr(self, split))
        if start > end:
            raise ConfigError(f"split '{split}' starts after it ends: {start.date()} > {end.date()}")
        return start, end


def data_fingerprint(provider: Path, market: str) -> dict:
    """Sizes and modification times of every file the processed data is read from: the calendar, the market's
    instruments file and each listed instrument's feature files. A new download, a re-adjustment or one fixed
    bar rewrites a file and so changes the fingerprint; statting them costs milliseconds, where a content hash
    would read everything the cache exists to avoid reading."""
    instruments = provider / "instruments" / f"{market}.txt"
    codes = sorted({line.split("\t")[0].strip().lower() for line in instruments.read_text().splitlines()
                    if line.strip()}) if instruments.is_file() else []
    files = [provider / "calendars" / "day.txt", instruments]
    files += [f for code in codes if (provider / "features" / code).is_dir()
              for f in sorted((provider / "features" / code).iterdir())]
    return {str(f.relative_to(provider)): [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()}


def _cache_key(config: DataConfig, lookback: int, provider: Path) -> str:
    """The processed bars depend on the dates, the market, the data files and how far back the first context
    reaches (``lookback``); the rest of the window's shape only cuts them."""
    settings = {**asdict(config), "provider_uri": str(provider), "cache_dir": None, "version": CACHE_VERSION,
                "lookback": lookback, "data": data_fingerprint(provider, config.market)}
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_split_length(split: str, start: pd.Timestamp, end: pd.Timestamp, horizon: int) -> None:
    """A split must hold at least one window's targets."""
    from qlib.data import D

    days = len(D.calendar(start_time=start, end_time=end))
    if days < horizon:
        raise KronosInputError(f"split '{split}' ({start.date()}..{end.date()}) has {days} trading day(s), "
                               f"shorter than one window's {horizon}-bar horizon")


def split_datasets(panel: BarPanel, spans: Spans, ranges: dict[str, tuple[pd.Timestamp, pd.Timestamp]],
                   spec: ForecastSpec, market: str) -> dict[str, WindowDataset]:
    """One WindowDataset per named date range; an empty one is an error naming it."""
    datasets = {}
    for split, (start, end) in ranges.items():
        starts = window_starts(panel, spec, start, end, spans)
        if len(starts) == 0:
            raise KronosInputError(
                f"split '{split}' ({pd.Timestamp(start).date()}..{pd.Timestamp(end).date()}) of market '{market}' "
                f"has no window of {spec.lookback} + {spec.pred_len} traded bars"
            )
        logger.info("%s: %d windows", split, len(starts))
        datasets[split] = WindowDataset(panel, starts, spec)
    return datasets


def _load_panel(market: str, ranges: list[tuple[pd.Timestamp, pd.Timestamp]], lookback: int) -> tuple[BarPanel, Spans]:
    first, last = min(r[0] for r in ranges), max(r[1] for r in ranges)
    spans = membership(market, first, last)
    return BarPanel.from_frame(load_bars(sorted(spans), history_start(first, lookback), last)), spans


def _save_cache(path: Path, panel: BarPanel, spans: Spans) -> None:
    flat = [(inst, a, b) for inst, periods in spans.items() for a, b in periods]
    arrays = {**asdict(panel), "span_instrument": np.array([inst for inst, _, _ in flat]),
              "span_start": np.array([a for _, a, _ in flat], dtype="datetime64[ns]"),
              "span_end": np.array([b for _, _, b in flat], dtype="datetime64[ns]")}
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_cache(path: Path) -> tuple[BarPanel, Spans]:
    with np.load(path, allow_pickle=False) as data:
        panel = BarPanel(**{k: data[k] for k in ("instruments", "offsets", "dates", "values", "stamps")})
        spans: Spans = {}
        for inst, a, b in zip(data["span_instrument"], data["span_start"], data["span_end"]):
            spans.setdefault(str(inst), []).append((pd.Timestamp(a), pd.Timestamp(b)))
    return panel, spans


def build_datasets(config: DataConfig, spec: ForecastSpec) -> dict[str, WindowDataset]:
    """Window datasets of shape ``spec`` for ``config.splits``, from the on-disk cache when the settings were
    seen before."""
    provider = init_qlib(config.provider_uri, config.region)
    ranges = {s: config.date_range(s) for s in config.splits}
    for split, (start, end) in ranges.items():  # before the cache: a cached panel may serve a longer pred_len
        check_split_length(split, start, end, spec.pred_len)
    cache = None
    if config.cache_dir:
        cache = Path(config.cache_dir).expanduser() / f"windows-{_cache_key(config, spec.lookback, provider)}.npz"
    began = time.perf_counter()
    if cache is not None and cache.exists():
        panel, spans = _load_cache(cache)
        logger.info("loaded processed data from %s in %.1fs", cache, time.perf_counter() - began)
    else:
        panel, spans = _load_panel(config.market, list(ranges.values()), spec.lookback)
        if cache is not None:
            _save_cache(cache, panel, spans)
        logger.info("loaded %d instruments in %.1fs", len(panel.instruments), time.perf_counter() - began)
    return split_datasets(panel, spans, ranges, spec, config.market)


__all__ = ["DataConfig", "SPLITS", "build_datasets", "check_split_length", "data_fingerprint", "split_datasets"]
