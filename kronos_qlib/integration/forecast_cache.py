"""On-disk cache of sampled forecast paths, one file per trading day.

Keyed by everything that determines a forecast (both networks' weights, the sampling settings, the data):
re-running a backtest or trying another signal reads the paths instead of sampling them again, and a long
prediction that is interrupted resumes from the last finished day. A day file that cannot be read (truncated,
corrupted) is logged with its path and treated as absent, so its day is sampled and written again.

Several processes may fill one folder at once (``scripts/forecast.py`` under torchrun, or two runs of the same
settings): a save holds the folder's lock file while it merges its forecasts into what the day file holds and
renames the result into place, so no writer drops another's forecasts. The lock is ``fcntl.flock``: local
file systems and NFSv4 honour it; across nodes on a file system that does not, give each process its own days
(as ``scripts/forecast.py`` does) and the atomic rename alone keeps every file whole.

Layout of ``<root>/<digest>/``: ``key.json`` (the settings) and one ``YYYY-MM-DD.npz`` per day with arrays
``instruments`` (n,), ``paths`` (n, sample_count, pred_len, 6) in price units and ``last_close`` (n,).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import KronosInputError
from ..files import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)
#: What reading a damaged .npz raises, depending on where it is damaged.
_READ_ERRORS = (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError)
#: Bump when the layout above or the way paths are drawn changes: the key, and so the folder, changes with it.
FORMAT_VERSION = 3


def read_day(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instruments (n,) str, paths (n, sample_count, pred_len, 6), last_close (n,)) of one day file; an error
    naming the file when it is damaged or not of this layout."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("instruments", "paths", "last_close") if name in data.files}
    except _READ_ERRORS as err:
        raise KronosInputError(f"forecast file '{path}' cannot be read ({type(err).__name__}: {err})") from err
    missing = {"instruments", "paths", "last_close"} - set(arrays)
    if missing:
        raise KronosInputError(f"forecast file '{path}' lacks the array(s) {', '.join(sorted(missing))}")
    instruments, paths, last_close = arrays["instruments"].astype(str), arrays["paths"], arrays["last_close"]
    if paths.ndim != 4 or not len(instruments) == len(paths) == len(last_close):
        raise KronosInputError(f"forecast file '{path}': paths must be (instruments, sample_count, pred_len, 6) "
                               f"for {len(instruments)} instruments and closes, got {paths.shape}")
    return instruments, paths, last_close.astype(np.float64)


class ForecastCache:
    def __init__(self, root: str | Path | None, key: dict):
        """``root`` None disables the cache; ``key`` is any JSON-able description of the forecast settings."""
        key = {**key, "version": FORMAT_VERSION}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = None if root is None else Path(root).expanduser() / digest
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.folder / "key.json", json.dumps(key, sort_keys=True, indent=2, default=str))

    def _path(self, date: pd.Timestamp) -> Path:
        return self.folder / f"{pd.Timestamp(date).strftime('%Y-%m-%d')}.npz"

    def load(self, date: pd.Timestamp) -> dict[str, tuple[np.ndarray, float]]:
        """instrument -> (paths (sample_count, pred_len, 6), last close) cached for ``date``."""
        path = None if self.folder is None else self._path(date)
        if path is None or not path.exists():
            return {}
        try:
            instruments, paths, last_close = read_day(path)
        except KronosInputError as error:
            logger.warning("%s: its day is sampled again", error)
            return {}
        return {inst: (p, float(close)) for inst, p, close in zip(instruments, paths, last_close)}

    @contextlib.contextmanager
    def _locked(self):
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def save(self, date: pd.Timestamp, forecasts: dict[str, tuple[np.ndarray, float]]
             ) -> dict[str, tuple[np.ndarray, float]]:
        """Add ``forecasts`` to the day file of ``date`` (atomically, under the folder's lock) and return all the
        day's forecasts; an instrument already in the file keeps its stored forecast."""
        if self.folder is None or not forecasts:
            return dict(forecasts)
        with self._locked():
            merged = {**forecasts, **self.load(date)}
            names = sorted(merged)
            atomic_write(self._path(date), lambda f: np.savez(
                f, instruments=np.array(names), paths=np.stack([merged[n][0] for n in names]),
                last_close=np.array([merged[n][1] for n in names])))
        return merged
