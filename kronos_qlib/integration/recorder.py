"""What KronosModel leaves in the active Qlib recorder (under qrun): training curves, settings and checkpoints.

Qlib's own models log their training to the experiment they run in; these do the same for both Kronos stages,
so a run's curves sit beside its IC and backtest. Outside a recorder (a plain ``fit`` in a notebook) nothing is
logged and nothing is created.
"""
from __future__ import annotations

import json
from typing import Any

from ..training.stage_folder import StageFolder


def active_recorder():
    """The recorder qrun (or ``with R.start(...)``) is running, or None: never starts one."""
    from qlib.workflow import R

    try:
        experiment = R.exp_manager.active_experiment
    except AttributeError:  # Qlib is not initialized
        return None
    return None if experiment is None else experiment.active_recorder


def flatten(values: dict[str, Any], prefix: str) -> dict[str, str]:
    """Nested settings as ``prefix.key.subkey`` params (MLflow params are flat strings)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else str(value)
    return out


def log_settings(recorder, **sections: dict[str, Any]) -> None:
    """Each section (e.g. finetune=..., forecast=..., sampling=...) as ``kronos.<section>.<key>`` params."""
    params = {}
    for section, values in sections.items():
        params.update(flatten(values, f"kronos.{section}"))
    recorder.log_params(**params)


def log_stage(recorder, folder: StageFolder, prefix: str = "") -> None:
    """Every epoch of a stage (``metrics.jsonl``, so a reused or resumed stage logs its whole history) as metrics
    ``<prefix><stage>/<name>`` with step = epoch, the folder of its best checkpoint as a tag, and the weights it
    started from (done.json) as params ``kronos.start.<prefix><stage>.<network>.<key>``."""
    if not folder.metrics.exists():
        return
    start = folder.start()
    if start:
        recorder.log_params(**flatten(start, f"kronos.start.{prefix}{folder.stage}"))
    for line in folder.metrics.read_text().splitlines():
        row = json.loads(line)
        recorder.log_metrics(step=int(row["epoch"]), **{
            f"{prefix}{folder.stage}/{key}": float(value) for key, value in row.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch"})
    recorder.set_tags(**{f"kronos.{prefix}{folder.stage}_checkpoint": str(folder.best.resolve())})
