"""On-disk cache of sampled forecast paths, one file per trading day, and its one reader.

Keyed by everything that determines a forecast: the folder by both networks' weights, the forecast and sampling
settings and the provider folder; each stored forecast by a digest of what it was sampled from
(:func:`bars_digest`: the context's bars and dates, the forecast's dates), checked on every read. A provider whose
prices changed (re-adjusted after a split, re-downloaded, a bad bar fixed) thus re-samples exactly the forecasts
whose context changed, and says so in the log; the rest are read. A content digest rather than file sizes and
times: it is exact, costs a few seconds for a three-year backtest, and keeps every forecast whose bars did not
change. Re-running a backtest or trying another signal reads the paths instead of sampling them again, and a long
prediction that is interrupted resumes from the last finished day. A day file that cannot be read (truncated,
corrupted) is logged with its path and treated as absent, so its day is sampled and written again. Whoever reads
a whole folder (forecast evaluation, the factor handler) reads it through :func:`day_files` and :func:`read_day`.

Several processes may fill one folder at once (``scripts/forecast.py`` under torchrun, or two runs of the same
settings): a save holds the folder's lock file while it merges its forecasts into what the day file holds and
renames the result into place, so no writer drops another's forecasts. The lock is ``fcntl.flock``: local
file systems and NFSv4 honour it; across nodes on a file system that does not, give each process its own days
(as ``scripts/forecast.py`` does) and the atomic rename alone keeps every file whole.

Layout of ``<root>/<digest>/``: ``key.json`` (the settings) and one ``YYYY-MM-DD.npz`` per day with arrays
``instruments`` (n,), ``paths`` (n, sample_count, pred_len, 6) in price units, ``last_close`` (n,) and ``inputs``
(n,), the digest of each forecast's bars.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import KronosInputError
from ..files import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)
#: What reading a damaged .npz raises, depending on where it is damaged.
_READ_ERRORS = (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError)
#: Bump when the layout above or the way paths are drawn changes: the key, and so the folder, changes with it.
FORMAT_VERSION = 4


#: The arrays of a day file; ``inputs`` may be missing (a file written before version 4, which evaluation scripts
#: still read): its forecasts then match no digest, so the cache samples them again.
ARRAYS = ("instruments", "paths", "last_close", "inputs")


def bars_digest(values: np.ndarray, stamps: np.ndarray, future: np.ndarray) -> str:
    """What a forecast was sampled from: a digest of its context bars (lookback, 6), their time features and
    those of the forecast's days (pred_len, 5)."""
    digest = hashlib.sha1(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    for features in (stamps, future):
        digest.update(np.ascontiguousarray(features, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def _read(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ARRAYS if name in data.files}
    except _READ_ERRORS as err:
        raise KronosInputError(f"forecast file '{path}' cannot be read ({type(err).__name__}: {err})") from err
    arrays.setdefault("inputs", np.full(len(arrays.get("instruments", ())), ""))
    missing = set(ARRAYS) - set(arrays)
    if missing:
        raise KronosInputError(f"forecast file '{path}' lacks the array(s) {', '.join(sorted(missing))}")
    n = len(arrays["instruments"])
    if arrays["paths"].ndim != 4 or not n == len(arrays["paths"]) == len(arrays["last_close"]) == len(arrays["inputs"]):
        raise KronosInputError(f"forecast file '{path}': paths must be (instruments, sample_count, pred_len, 6) "
                               f"for {n} instruments, closes and input digests, got {arrays['paths'].shape}")
    return arrays


def _entries(path: Path) -> dict[str, tuple[np.ndarray, float, str]]:
    """instrument -> (paths, last close, input digest) of one day file."""
    arrays = _read(path)
    return {inst: (p, float(close), digest) for inst, p, close, digest in zip(
        arrays["instruments"].astype(str), arrays["paths"], arrays["last_close"], arrays["inputs"].astype(str))}


def read_day(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instruments (n,) str, paths (n, sample_count, pred_len, 6), last_close (n,)) of one day file; an error
    naming the file when it is damaged or not of this layout."""
    arrays = _read(path)
    return arrays["instruments"].astype(str), arrays["paths"], arrays["last_close"].astype(np.float64)


def day_files(folder: Path, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None
              ) -> list[tuple[pd.Timestamp, Path]]:
    """(day, file) of every day file in ``folder`` whose day lies in [start, end] (None: open-ended), in order:
    how readers of a whole folder (evaluation, the factor handler) find what :class:`ForecastCache` wrote."""
    files = sorted(Path(folder).glob("????-??-??.npz"))
    low, high = pd.Timestamp(start or pd.Timestamp.min), pd.Timestamp(end or pd.Timestamp.max)
    return [(day, f) for f in files if low <= (day := pd.Timestamp(f.stem)) <= high]


def keyed_folder(root: str | Path | None, key: dict) -> Path | None:
    """``root/<digest of key>/`` with the key written beside what it holds (None: no cache)."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if root is None:
        return None
    folder = Path(root).expanduser() / digest
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "key.json", json.dumps(key, sort_keys=True, indent=2, default=str))
    return folder


class ForecastCache:
    def __init__(self, root: str | Path | None, key: dict):
        """``root`` None disables the cache; ``key`` is any JSON-able description of the forecast settings."""
        self.folder = keyed_folder(root, {**key, "version": FORMAT_VERSION})

    def _path(self, date: pd.Timestamp) -> Path:
        return self.folder / f"{pd.Timestamp(date).strftime('%Y-%m-%d')}.npz"

    def load(self, date: pd.Timestamp, inputs: Mapping[str, str]) -> dict[str, tuple[np.ndarray, float]]:
        """instrument -> (paths (sample_count, pred_len, 6), last close) cached for ``date``, for the instruments
        of ``inputs`` (instrument -> :func:`bars_digest` of the bars its forecast reads now) whose forecast was
        sampled from those bars; one sampled from other bars is left out, and logged, so it is sampled again."""
        path = None if self.folder is None else self._path(date)
        if path is None or not path.exists():
            return {}
        try:
            stored = _entries(path)
        except KronosInputError as error:
            logger.warning("%s: its day is sampled again", error)
            return {}
        changed = sorted(inst for inst in inputs if inst in stored and stored[inst][2] != inputs[inst])
        if changed:
            logger.warning("%s: the data of %d instrument(s) (%s) changed since their forecasts were sampled: they "
                           "are sampled again", pd.Timestamp(date).date(), len(changed),
                           ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else ""))
        return {inst: (p, close) for inst, (p, close, digest) in stored.items()
                if inst in inputs and digest == inputs[inst]}

    @contextlib.contextmanager
    def _locked(self):
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def save(self, date: pd.Timestamp, forecasts: dict[str, tuple[np.ndarray, float]], inputs: Mapping[str, str]
             ) -> dict[str, tuple[np.ndarray, float]]:
        """Add ``forecasts``, sampled from the bars of digests ``inputs``, to the day file of ``date``
        (atomically, under the folder's lock; each replaces a stored forecast of its instrument) and return the
        forecasts of ``inputs``' instruments the day file now holds."""
        if self.folder is None or not forecasts:
            return dict(forecasts)
        with self._locked():
            try:
                kept = _entries(self._path(date)) if self._path(date).exists() else {}
            except KronosInputError:
                kept = {}  # damaged: load() has logged it; the new forecasts replace it
            merged = {**kept, **{inst: (p, close, inputs[inst]) for inst, (p, close) in forecasts.items()}}
            names = sorted(merged)
            atomic_write(self._path(date), lambda f: np.savez(
                f, instruments=np.array(names), paths=np.stack([merged[n][0] for n in names]),
                last_close=np.array([merged[n][1] for n in names]), inputs=np.array([merged[n][2] for n in names])))
        return {inst: (p, close) for inst, (p, close, digest) in merged.items()
                if inst in inputs and digest == inputs[inst]}
