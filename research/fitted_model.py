"""The shipped Kronos workflow's model, fitted the way qrun fits it, for the studies that score it on valid."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def fit_workflow_model(work: Path, provider: str, overrides: dict | None = None):
    """workflows/kronos_csi300.yaml rendered under the caller's environment (QLIB_DATA from ``provider``,
    KRONOS_CACHE = <work>/forecasts), its dataset and KronosModel built, and ``model.fit(dataset)`` run in ``work``:
    finished stage folders (runs/) there are reused, missing ones trained. ``overrides`` replace model kwargs
    (e.g. ``finetune``). Returns (model, dataset, rendered config)."""
    import qlib
    from qlib.utils import init_instance_by_config

    from kronos_qlib.qrun import WORKFLOWS, load_workflow

    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the workflow's relative paths (mlruns.db, runs/) are where qrun ran
    config = load_workflow(WORKFLOWS / "kronos_csi300.yaml",
                           {"QLIB_DATA": str(Path(provider).resolve()),
                            "KRONOS_CACHE": str(work / "forecasts")})
    qlib.init(**config["qlib_init"])
    dataset = init_instance_by_config(config["task"]["dataset"])
    model_config = config["task"]["model"]
    model_config["kwargs"].update(overrides or {})
    model = init_instance_by_config(model_config)
    model.fit(dataset)
    return model, dataset, config


def shipped_sampling() -> dict:
    """The Kronos workflow's sampling settings as qrun renders them in this shell (T, top_p, top_k, path count,
    seed): a choice made on valid records those it was made with, and its test phase compares them before fitting
    anything."""
    from kronos_qlib.inference import Sampling
    from kronos_qlib.qrun import WORKFLOWS, load_workflow

    config = load_workflow(WORKFLOWS / "kronos_csi300.yaml")
    return Sampling.build(config["task"]["model"]["kwargs"]["sampling"], "the workflow's sampling").to_dict()


def require_shipped_sampling(recorded: dict | None, names: tuple[str, ...], script: str) -> dict:
    """The workflow's sampling settings ``names``; exit, naming both, when they differ from those a valid choice
    was ``recorded`` with, so that a test phase never scores paths its choice was not made on."""
    shipped = {name: value for name, value in shipped_sampling().items() if name in names}
    if {name: (recorded or {}).get(name) for name in names} != shipped:
        sys.exit(f"the workflow now samples with {shipped}, the choice was made with {recorded}: run `{script} "
                 f"choose` again")
    return shipped
