"""On-disk cache of sampled forecast paths, one file per trading day.

Keyed by everything that determines a forecast (both networks' weights, the sampling settings, the data):
re-running a backtest or trying another signal reads the paths instead of sampling them again, and a long
prediction that is interrupted resumes from the last finished day.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write, atomic_write_text


class ForecastCache:
    def __init__(self, root: str | Path | None, key: dict):
        """``root`` None disables the cache; ``key`` is any JSON-able description of the forecast settings."""
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = None if root is None else Path(root).expanduser() / digest
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.folder / "key.json", json.dumps(key, sort_keys=True, indent=2, default=str))

    def _path(self, date: pd.Timestamp) -> Path:
        return self.folder / f"{pd.Timestamp(date).strftime('%Y-%m-%d')}.npz"

    def load(self, date: pd.Timestamp) -> dict[str, tuple[np.ndarray, float]]:
        """instrument -> (paths (sample_count, pred_len, 6), last close) cached for ``date``."""
        if self.folder is None or not self._path(date).exists():
            return {}
        with np.load(self._path(date), allow_pickle=False) as data:
            return {str(inst): (paths, float(close))
                    for inst, paths, close in zip(data["instruments"], data["paths"], data["last_close"])}

    def save(self, date: pd.Timestamp, forecasts: dict[str, tuple[np.ndarray, float]]) -> None:
        """Write all forecasts of ``date`` (cached ones included) atomically."""
        if self.folder is None or not forecasts:
            return
        names = sorted(forecasts)
        atomic_write(self._path(date), lambda f: np.savez(
            f, instruments=np.array(names), paths=np.stack([forecasts[n][0] for n in names]),
            last_close=np.array([forecasts[n][1] for n in names])))
