"""From a Qlib provider to train / valid / test window datasets, cached on disk by their settings."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, KronosInputError
from .qlib_source import Spans, check_provider, init_qlib, load_bars, membership
from .windows import BarPanel, WindowDataset, WindowSpec, window_starts

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
CACHE_VERSION = 1  # bump when the processing below changes


@dataclass
class DataConfig:
    """Where the bars come from and how they are cut into windows."""

    provider_uri: str = "~/.qlib/qlib_data/cn_data"
    region: str = "cn"
    market: str = "csi300"
    train: tuple[str, str] = ("2010-01-01", "2017-12-31")
    valid: tuple[str, str] = ("2018-01-01", "2019-12-31")
    test: tuple[str, str] = ("2020-01-01", "2022-12-30")
    lookback: int = 90
    horizon: int = 10
    clip: float = 5.0
    #: Folder for processed data; None disables the cache.
    cache_dir: str | None = "~/.cache/kronos_qlib"
    splits: tuple[str, ...] = field(default=SPLITS)

    @property
    def spec(self) -> WindowSpec:
        return WindowSpec(self.lookback, self.horizon, self.clip)

    def date_range(self, split: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        start, end = (pd.Timestamp(d) for d in getattr(self, split))
        if start > end:
            raise ConfigError(f"split '{split}' starts after it ends: {start.date()} > {end.date()}")
        return start, end


def _fingerprint(provider: Path, market: str) -> dict:
    """Sizes and modification times of the files that change when the provider's data is updated."""
    files = [provider / "calendars" / "day.txt", provider / "instruments" / f"{market}.txt"]
    return {str(f.relative_to(provider)): [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()}


def _cache_key(config: DataConfig, provider: Path) -> str:
    settings = {**asdict(config), "provider_uri": str(provider), "cache_dir": None, "version": CACHE_VERSION,
                "data": _fingerprint(provider, config.market)}
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)


def _load_start(earliest: pd.Timestamp, lookback: int) -> pd.Timestamp:
    """A date early enough that the first split's windows can find their context (suspensions included)."""
    from qlib.data import D

    calendar = D.calendar(end_time=earliest)
    return pd.Timestamp(calendar[max(0, len(calendar) - 2 * lookback)]) if len(calendar) else earliest


def _check_split_lengths(config: DataConfig) -> None:
    from qlib.data import D

    for split in config.splits:
        start, end = config.date_range(split)
        days = len(D.calendar(start_time=start, end_time=end))
        if days < config.horizon:
            raise KronosInputError(
                f"split '{split}' ({start.date()}..{end.date()}) has {days} trading day(s), shorter than one "
                f"window's {config.horizon}-bar horizon"
            )


def _build(config: DataConfig) -> tuple[BarPanel, dict[str, np.ndarray]]:
    _check_split_lengths(config)
    ranges = [config.date_range(s) for s in config.splits]
    first, last = min(r[0] for r in ranges), max(r[1] for r in ranges)
    spans: Spans = membership(config.market, first, last)
    frame = load_bars(sorted(spans), _load_start(first, config.lookback), last)
    panel = BarPanel.from_frame(frame)
    starts = {s: window_starts(panel, config.spec, *config.date_range(s), spans) for s in config.splits}
    return panel, starts


def build_datasets(config: DataConfig) -> dict[str, WindowDataset]:
    """Window datasets for ``config.splits``, from the on-disk cache when the settings were seen before."""
    provider = init_qlib(config.provider_uri, config.region)
    cache = None
    if config.cache_dir:
        cache = Path(config.cache_dir).expanduser() / f"windows-{_cache_key(config, provider)}.npz"
    began = time.perf_counter()
    if cache is not None and cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            panel = BarPanel(**{k: data[k] for k in ("instruments", "offsets", "dates", "values", "stamps")})
            starts = {s: data[f"starts_{s}"] for s in config.splits}
        logger.info("loaded processed data from %s in %.1fs", cache, time.perf_counter() - began)
    else:
        panel, starts = _build(config)
        if cache is not None:
            _save_npz(cache, {**asdict(panel), **{f"starts_{s}": v for s, v in starts.items()}})
        logger.info("processed %d instruments into windows in %.1fs", len(panel.instruments),
                    time.perf_counter() - began)
    for split, s in starts.items():
        if len(s) == 0:
            start, end = config.date_range(split)
            raise KronosInputError(
                f"split '{split}' ({start.date()}..{end.date()}) of market '{config.market}' has no window of "
                f"{config.lookback} + {config.horizon} traded bars"
            )
        logger.info("%s: %d windows", split, len(s))
    return {s: WindowDataset(panel, starts[s], config.spec) for s in config.splits}


__all__ = ["DataConfig", "SPLITS", "build_datasets", "check_provider"]
