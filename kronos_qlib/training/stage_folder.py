"""A stage's folder and its states, in one place: every decision to train, resume, skip or refuse is made here.

``output_dir/<stage>/`` holds ``best/`` (the best validation checkpoint, ``save_pretrained`` layout),
``last.pt`` (the resumable training state), ``metrics.jsonl`` (one line per epoch) and ``done.json`` (the
settings the stage was trained with, and under ``start`` the weights it started from, written after its last
epoch). Its state is one of

- empty: none of these files;
- in progress: files of a run but no ``done.json`` (the run was killed, or is running);
- finished: ``done.json`` is there.

Nothing a user made is discarded without being asked: an unfinished run is continued only with ``resume`` and
otherwise refused, a finished one is reused or refused, and only ``skip_existing: false`` trains a finished
stage again.
"""
from __future__ import annotations

import enum
import json
import logging
import os
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write_text

logger = logging.getLogger(__name__)


class Plan(enum.Enum):
    """What to do with a stage, decided by :meth:`StageFolder.plan`."""

    SKIP = "skip"  # finished with the same settings: reuse best/
    RESUME = "resume"  # in progress: continue from last.pt
    FRESH = "fresh"  # empty, or finished and to be trained again: start at epoch 1


def differing_keys(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


class StageFolder:
    def __init__(self, path: str | Path, stage: str):
        self.path, self.stage = Path(path), stage

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def done(self) -> Path:
        return self.path / "done.json"

    def _done(self) -> dict | None:
        if not self.done.exists():
            return None
        try:
            return json.loads(self.done.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{self.done} is damaged ({err}): move {self.path} away to train the {self.stage} "
                              f"stage again") from err

    def finished_settings(self) -> dict | None:
        """The settings of a finished stage, None when it is not finished. The weights it started from are not
        among them: a stage finished before they were recorded is reused as before."""
        done = self._done()
        return None if done is None else {key: value for key, value in done.items() if key != "start"}

    def start(self) -> dict | None:
        """network -> the weights a finished stage started from (:func:`~kronos_qlib.model.hub.origin`, or random
        weights and their seed); None when it is not finished or finished before they were recorded."""
        return (self._done() or {}).get("start")

    def in_progress(self) -> bool:
        """A run left something to continue: a checkpoint or a logged epoch (a run killed in its first epoch
        leaves nothing worth a --resume)."""
        return not self.done.exists() and (self.best.exists() or self.last.exists() or self.epochs_logged() > 0)

    def epochs_logged(self) -> int:
        return len(self.metrics.read_text().splitlines()) if self.metrics.exists() else 0

    def plan(self, settings: dict, finished: dict | None, in_progress: bool, *, skip_existing: bool,
             resume: bool) -> Plan:
        """What to do, given the state (read by :meth:`finished_settings` / :meth:`in_progress`, which the caller
        may first check agree across ranks). Raises ConfigError, touching nothing, where the user must choose."""
        if finished is not None:
            if finished == settings and skip_existing:
                if not (self.best / "model.safetensors").is_file():
                    raise ConfigError(f"{self.path} is marked finished (done.json) but {self.best} holds no "
                                      f"checkpoint: move the folder away to train the {self.stage} stage again")
                return Plan.SKIP
            if skip_existing:
                raise ConfigError(f"{self.path} holds a {self.stage} trained with other settings (they differ in "
                                  f"{differing_keys(finished, settings)}): use another output_dir, or set "
                                  f"skip_existing: false to train it again")
            return Plan.FRESH
        if in_progress:
            if resume:
                return Plan.RESUME
            raise ConfigError(f"{self.path} holds an unfinished {self.stage} run ({self.epochs_logged()} epoch(s) "
                              f"logged): pass --resume to continue it, or move the folder away (or choose another "
                              f"output_dir) to start over")
        return Plan.FRESH

    # ---------------------------------------------------------------------------------------- transitions
    def start_fresh(self) -> None:
        """Finished or empty -> in progress at epoch 1 (only after :meth:`plan` said so).

        The old folder is renamed away in one step before it is deleted: a crash leaves either the finished
        stage or an empty one, never a mix of old files.
        """
        if self.path.exists():
            discarded = self.path.with_name(f".{self.path.name}.discarded-{os.getpid()}")
            os.replace(self.path, discarded)
            shutil.rmtree(discarded)
        self.path.mkdir(parents=True, exist_ok=True)

    def finish(self, settings: dict, start: dict) -> None:
        """In progress -> finished with ``settings``, naming the weights it started from (``start``)."""
        atomic_write_text(self.done, json.dumps({**settings, "start": start}, sort_keys=True, indent=2, default=str))
        logger.info("%s stage finished: best checkpoint in %s", self.stage, self.best)
