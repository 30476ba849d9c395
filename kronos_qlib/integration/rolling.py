"""Rolling retraining with Qlib's own tools: roll a workflow's segments forward, finetune each roll from the last.

The shipped workflow is read as qrun reads it (rendered from the environment). Qlib's ``RollingGen`` shifts its
train, valid and test segments forward by ``step`` trading days (``ROLL_SD``: every segment keeps its length),
and a ``TrainerR`` trains the rolls in order, each in its own recorder of ``<experiment>_rolls``: roll 0 fits as
qrun would (reusing the single-fit run's stage folders, whose segments it shares), every later roll loads the
previous roll's fitted model (``params.pkl``) and calls ``finetune`` on its own segments, into its own folder.
Each roll records its test predictions with the workflow's ``SignalRecord``; Qlib's ``RollingGroup`` merges them
into one signal, recorded in a new recorder of ``<experiment>``, where the workflow's other records
(``SigAnaRecord``, ``PortAnaRecord`` with its strategy and costs) analyse and backtest it.

Why sliding and not expanding (``ROLL_EX``): the weights carry what earlier rolls learned, so a refit need not see
the whole history again; sliding keeps each refit's cost constant and its sampled windows on recent years, where
expanding would grow the cost roll after roll and dilute the new data among old windows.

No roll trains on its own test targets: a training window belongs to a split when its target bars lie inside the
split's dates (:func:`kronos_qlib.data.window_starts`), and every roll's train and valid segments end before its
test segment starts (:func:`roll_tasks` refuses a workflow where they do not).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import qlib
from qlib.cli.run import sys_config
from qlib.data import D
from qlib.data.dataset import Dataset
from qlib.model.base import Model
from qlib.model.ens.group import RollingGroup
from qlib.model.trainer import TrainerR
from qlib.utils import fill_placeholder, flatten_dict, get_cls_kwargs, init_instance_by_config
from qlib.workflow import R
from qlib.workflow.record_temp import SignalRecord
from qlib.workflow.recorder import Recorder
from qlib.workflow.task.collect import RecorderCollector
from qlib.workflow.task.gen import RollingGen, task_generator

from ..errors import ConfigError, KronosInputError
from ..model.hub import weights_digest
from ..qrun import load_workflow

logger = logging.getLogger(__name__)
RECORD_MODULE = "qlib.workflow.record_temp"


@dataclass
class RollingRun:
    """Where a rolling run was recorded: the merged signal's recorder and the rolls' recorders, in order."""

    experiment: str
    recorder_id: str
    roll_experiment: str
    roll_ids: list[str]
    segments: list[dict[str, tuple[pd.Timestamp, pd.Timestamp]]]  # each roll's train/valid/test


def _is_signal_record(record) -> bool:
    return issubclass(get_cls_kwargs(record, RECORD_MODULE)[0], SignalRecord)


def roll_tasks(task: dict, step: int) -> list[dict]:
    """The workflow's task rolled by Qlib's ``RollingGen`` (sliding, ``step`` trading days), each roll's test
    segment cut at the workflow's test end, its records reduced to the signal (the rest runs on the merged one).

    Raises KronosInputError for a step below 1, a test segment shorter than one step, and a roll whose train or
    valid segment does not end before its test segment starts.
    """
    if step < 1:
        raise KronosInputError(f"step must be at least 1 trading day, got {step}")
    segments = task["dataset"]["kwargs"]["segments"]
    missing = {"train", "valid", "test"} - set(segments)
    if missing:
        raise ConfigError(f"task.dataset.kwargs.segments lacks {sorted(missing)}")
    test_start, test_end = (pd.Timestamp(t) for t in segments["test"])
    days = len(D.calendar(start_time=test_start, end_time=test_end))
    if days < step:
        raise KronosInputError(f"the test segment ({test_start.date()}..{test_end.date()}) has {days} trading days, "
                               f"fewer than one step ({step}): lower the step or lengthen the test segment")
    # no ds_extra_mod_func: test segments are cut at test_end, which the handler's end_time already covers
    tasks = task_generator(task, RollingGen(step=step, rtype=RollingGen.ROLL_SD, ds_extra_mod_func=None))
    for roll in tasks:
        segs = roll["dataset"]["kwargs"]["segments"]
        start, end = segs["test"]
        segs["test"] = (start, test_end if end is None else min(end, test_end))
        for split in ("train", "valid"):
            if segs[split][1] is None or segs[split][1] >= start:
                raise KronosInputError(
                    f"roll testing {start.date()}..{segs['test'][1].date()} would train on its own test dates: its "
                    f"{split} segment {segs[split]} does not end before the test segment starts; end train and "
                    f"valid before TEST_START in the workflow")
        roll["record"] = [r for r in roll.get("record", []) if _is_signal_record(r)]
    return tasks


class FinetuneChain:
    """A ``TrainerR`` train function that chains the rolls: the first fits (what qrun's ``task_train`` does), each
    later one loads the previous roll's recorded model and finetunes it on its own segments into
    ``folder/roll<k>_<test start>_<start weights>``, so a folder's weights never stand for another start.

    Each roll's recorder holds what qrun's would (task, params.pkl, dataset, the signal records) and the tags
    ``kronos.rolling.start_weights`` (the predictor weights it started from, digest), ``kronos.rolling.weights``
    (what it ended with) and ``kronos.rolling.previous_recorder``.
    """

    def __init__(self, folder: str | Path, refit: dict | None = None):
        self.folder, self.refit = Path(folder), refit or {}
        self.previous: Recorder | None = None
        self.count = 0

    def __call__(self, task: dict, experiment_name: str, recorder_name: str | None = None) -> Recorder:
        segments = task["dataset"]["kwargs"]["segments"]
        logger.info("roll %d: train %s..%s, valid %s..%s, test %s..%s", self.count,
                    *(f"{pd.Timestamp(t).date()}" for split in ("train", "valid", "test") for t in segments[split]))
        with R.start(experiment_name=experiment_name, recorder_name=recorder_name):
            recorder = R.get_recorder()
            R.log_params(**flatten_dict(task))
            R.save_objects(task=task)
            dataset = init_instance_by_config(task["dataset"], accept_types=Dataset)
            if self.previous is None:
                model = init_instance_by_config(task["model"], accept_types=Model)
                model.fit(dataset)
            else:
                model = self.previous.load_object("params.pkl")
                start = weights_digest(model.model)
                folder = self.folder / f"roll{self.count}_{pd.Timestamp(segments['test'][0]):%Y-%m-%d}_{start[:12]}"
                refit = dict(model.refit or {})
                for key, value in self.refit.items():  # a section given here updates the workflow's, key by key
                    both = isinstance(value, dict) and isinstance(refit.get(key), dict)
                    refit[key] = {**refit[key], **value} if both else value
                model.refit = {**refit, "output_dir": str(folder)}
                R.set_tags(**{"kronos.rolling.start_weights": start,
                              "kronos.rolling.previous_recorder": self.previous.info["id"]})
                logger.info("roll %d: finetuning roll %d's weights into %s", self.count, self.count - 1, folder)
                model.finetune(dataset)
            R.set_tags(**{"kronos.rolling.roll": str(self.count),
                          "kronos.rolling.weights": weights_digest(model.model)})
            R.save_objects(**{"params.pkl": model})
            dataset.config(dump_all=False, recursive=True)
            R.save_objects(dataset=dataset)
            for record in fill_placeholder(task, {"<MODEL>": model, "<DATASET>": dataset}).get("record", []):
                init_instance_by_config(record, recorder=recorder, default_module=RECORD_MODULE,
                                        try_kwargs={"model": model, "dataset": dataset}).generate()
        self.previous, self.count = recorder, self.count + 1
        return recorder


def merge_rolls(recorders: list[Recorder]) -> dict[str, pd.DataFrame]:
    """The rolls' ``pred.pkl`` and ``label.pkl``, each merged into one frame by Qlib's ``RollingGroup``."""
    collected = RecorderCollector(experiment=lambda: recorders, process_list=[RollingGroup()],
                                  rec_key_func=lambda rec: ("rolling", rec.info["id"]),
                                  artifacts_path={"pred": "pred.pkl", "label": "label.pkl"})()
    if set(collected) != {"pred", "label"} or any(len(collected[k]) != 1 for k in collected):
        raise ConfigError(f"the rolls' recorders {[r.info['id'] for r in recorders]} lack pred.pkl or label.pkl")
    return {key: collected[key][("rolling",)] for key in ("pred", "label")}


def plan_rolls(workflow: str | Path, step: int) -> tuple[dict, list[dict]]:
    """The rendered workflow and its roll tasks, after initializing Qlib from its ``qlib_init`` as qrun does."""
    config = load_workflow(workflow)
    model = config["task"]["model"]
    finetune = (model.get("kwargs") or {}).get("finetune")
    if model.get("class") != "KronosModel" or not finetune or "output_dir" not in finetune:
        raise ConfigError(f"{workflow}: rolling retraining needs task.model to be KronosModel with "
                          f"finetune.output_dir (the first roll's training folder)")
    sys_config(config, str(workflow))
    qlib.init(**config["qlib_init"])
    return config, roll_tasks(config["task"], step)


def run_rolling(workflow: str | Path, step: int = 60, experiment: str | None = None,
                refit: dict | None = None) -> RollingRun:
    """Roll the workflow's task forward by ``step`` trading days over its test segment, finetuning each roll from
    the previous one, and analyse and backtest the merged signal with the workflow's own records.

    ``experiment`` (default ``<workflow experiment>_rolling``) gets the merged recorder, ``<experiment>_rolls``
    one recorder per roll. ``refit`` changes the refit settings of the rolls after the first (e.g.
    ``{"predictor_training": {"epochs": 2}}``). Run in the folder qrun would run in: the MLflow store, runs/ and
    the rolls' folders (beside the workflow's ``finetune.output_dir``) are relative to it.
    """
    config, tasks = plan_rolls(workflow, step)
    task = config["task"]
    finetune = task["model"]["kwargs"]["finetune"]
    experiment = experiment or f"{config.get('experiment_name', 'workflow')}_rolling"
    roll_experiment = f"{experiment}_rolls"
    logger.info("rolling %s: %d rolls of %d trading days, sliding; rolls in experiment %s, the merged signal in %s",
                workflow, len(tasks), step, roll_experiment, experiment)

    chain = FinetuneChain(f"{finetune['output_dir']}_rolling{step}", refit)
    recorders = TrainerR(experiment_name=roll_experiment, train_func=chain)(tasks)
    merged = merge_rolls(recorders)
    pred = merged["pred"]
    logger.info("merged signal: %d rows, %d days (%s..%s) from %d rolls", len(pred),
                pred.index.get_level_values("datetime").nunique(),
                *(f"{d.date()}" for d in (pred.index.get_level_values("datetime")[[0, -1]])), len(recorders))
    with R.start(experiment_name=experiment):
        recorder = R.get_recorder()
        R.log_params(**{"rolling.workflow": str(workflow), "rolling.step": step, "rolling.rtype": RollingGen.ROLL_SD,
                        "rolling.rolls": len(recorders), "rolling.roll_experiment": roll_experiment})
        R.set_tags(**{"kronos.rolling.roll_recorders": ",".join(r.info["id"] for r in recorders)})
        R.save_objects(**{"pred.pkl": pred, "label.pkl": merged["label"]})
        R.save_objects(config=config)
        for record in task.get("record", []):
            if not _is_signal_record(record):
                init_instance_by_config(copy.deepcopy(record), recorder=recorder,
                                        default_module=RECORD_MODULE).generate()
    logger.info("rolling run recorded: experiment %s, recorder %s", experiment, recorder.info["id"])
    return RollingRun(experiment, recorder.info["id"], roll_experiment, [r.info["id"] for r in recorders],
                      [t["dataset"]["kwargs"]["segments"] for t in tasks])
