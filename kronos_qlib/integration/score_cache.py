"""On-disk cache of the return head's scores, one file per trading day.

A head score is one forward pass, yet a three-year CSI300 test is some 200k of them (about 15 minutes on 2
cores at the CPU preset): a re-run backtest reads them instead. Keyed like the forecast cache: the folder by the
weights of tokenizer, predictor and head, the context settings and the provider folder; each score by the
:func:`~kronos_qlib.inference.forecast_cache.bars_digest` of the context it read, checked on every read, so a
changed bar re-scores exactly its stock-day. A damaged day file is logged and scored again. One writer per
folder (``predict`` writes a day once its scores are done, atomically).

Layout of ``<root>/<digest>/``: ``key.json`` and one ``YYYY-MM-DD.npz`` per day with arrays ``instruments``
(n,), ``scores`` (n,) and ``inputs`` (n,).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write
from ..inference.forecast_cache import _READ_ERRORS, keyed_folder

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1


class ScoreCache:
    def __init__(self, root: str | Path | None, key: dict):
        """``root`` None disables the cache."""
        self.folder = keyed_folder(root, {**key, "kind": "head scores", "version": FORMAT_VERSION})

    def _path(self, date: pd.Timestamp) -> Path:
        return self.folder / f"{pd.Timestamp(date).strftime('%Y-%m-%d')}.npz"

    def load(self, date: pd.Timestamp, inputs: Mapping[str, str]) -> dict[str, float]:
        """instrument -> score cached for ``date``, for the instruments of ``inputs`` whose score was computed
        from the bars of those digests."""
        if self.folder is None or not self._path(date).exists():
            return {}
        try:
            with np.load(self._path(date), allow_pickle=False) as data:
                stored = zip(data["instruments"].astype(str), data["scores"], data["inputs"].astype(str))
                stored = {inst: (float(score), digest) for inst, score, digest in stored}
        except _READ_ERRORS as err:
            logger.warning("head score file '%s' cannot be read (%s: %s): its day is scored again",
                           self._path(date), type(err).__name__, err)
            return {}
        return {inst: score for inst, (score, digest) in stored.items() if inputs.get(inst) == digest}

    def save(self, date: pd.Timestamp, scores: Mapping[str, float], inputs: Mapping[str, str]) -> None:
        """Write the day's scores (all of its members), replacing the day file."""
        if self.folder is None or not scores:
            return
        names = sorted(scores)
        atomic_write(self._path(date), lambda f: np.savez(
            f, instruments=np.array(names), scores=np.array([scores[n] for n in names], dtype=np.float64),
            inputs=np.array([inputs[n] for n in names])))
