"""Rolling retraining (kronos_qlib/integration/rolling.py) at a tiny scale: the shipped workflow, rendered from the
environment as qrun renders it, rolled into two rolls whose second finetunes the first's weights; one merged signal,
analysed and backtested; no roll trains on targets inside its own test segment.
"""
import os
import subprocess
import sys

import pandas as pd
import pytest

from kronos_qlib.errors import KronosInputError
from kronos_qlib.qrun import WORKFLOWS, smoke_env

from conftest import CN_DATA, REPO

VARIABLES = ["QLIB_DATA", "KRONOS_CACHE", "KRONOS_PRESET", "TRAIN_START", "TRAIN_END", "VALID_START", "VALID_END",
             "TEST_START", "TEST_END", "BACKTEST_END"]
# the smoke scale with a test segment of 6 trading days, so that a step of 3 makes exactly two rolls
ENV = {**smoke_env(), "TEST_END": "2016-10-17", "BACKTEST_END": "2016-10-14"}
STEP = 3


@pytest.fixture(scope="module")
def rolled(tmp_path_factory):
    """One rolling run in a fresh folder; every training window KronosModel actually built, per roll."""
    from kronos_qlib.integration import model as model_module
    from kronos_qlib.integration.rolling import run_rolling

    tmp = tmp_path_factory.mktemp("rolling")
    patch = pytest.MonkeyPatch()
    for name in VARIABLES:
        patch.delenv(name, raising=False)
    for name, value in {**ENV, "QLIB_DATA": str(CN_DATA), "KRONOS_CACHE": str(tmp / "forecasts")}.items():
        patch.setenv(name, value)
    patch.chdir(tmp)
    used = []
    split_datasets = model_module.split_datasets

    def spy(panel, spans, ranges, spec, market):
        datasets = split_datasets(panel, spans, ranges, spec, market)
        used.append({split: (pd.Timestamp(panel.dates[ds.starts + spec.lookback].min()),  # first target bar
                             pd.Timestamp(panel.dates[ds.starts + spec.length - 1].max()))  # last target bar
                     for split, ds in datasets.items()})
        return datasets

    patch.setattr(model_module, "split_datasets", spy)
    try:
        yield tmp, run_rolling(WORKFLOWS / "kronos_csi300.yaml", step=STEP), used
    finally:
        patch.undo()


def recorder(experiment, recorder_id):
    from qlib.workflow import R

    return R.get_recorder(experiment_name=experiment, recorder_id=recorder_id)


def test_rolls_never_train_on_their_own_test_targets(rolled):
    _, run, used = rolled
    assert len(run.roll_ids) == 2 and len(used) == 2, "two rolls, each training once"
    for roll_id, segments, windows in zip(run.roll_ids, run.segments, used):
        task = recorder(run.roll_experiment, roll_id).load_object("task")
        assert task["dataset"]["kwargs"]["segments"] == segments
        test_start = pd.Timestamp(segments["test"][0])
        for split in ("train", "valid"):
            start, end = (pd.Timestamp(t) for t in segments[split])
            assert end < test_start, (split, segments)
            first, last = windows[split]  # the windows actually built: their targets inside their split
            assert start <= first and last <= end < test_start, (split, windows[split], segments)
    tests = [tuple(pd.Timestamp(t) for t in s["test"]) for s in run.segments]
    assert tests[0][0] == pd.Timestamp("2016-10-10") and tests[-1][1] == pd.Timestamp(ENV["TEST_END"])
    assert tests[0][1] < tests[1][0], "test segments follow each other without overlap"
    # the second roll's segments slid forward by the step (Qlib's ROLL_SD), train and valid included
    assert run.segments[1]["valid"][1] > run.segments[0]["valid"][1]
    assert run.segments[1]["train"][0] > run.segments[0]["train"][0]


def test_second_roll_finetunes_the_first_rolls_weights(rolled):
    from kronos_qlib import Kronos
    from kronos_qlib.model.hub import weights_digest

    tmp, run, _ = rolled
    first, second = (recorder(run.roll_experiment, rid) for rid in run.roll_ids)
    first_weights = weights_digest(first.load_object("params.pkl").model)
    tags, params = second.list_tags(), second.list_params()
    assert tags["kronos.rolling.previous_recorder"] == run.roll_ids[0]
    assert tags["kronos.rolling.start_weights"] == first_weights
    start = tmp / params["kronos.refit.pre_trained_predictor"]  # the weights the refit started from
    assert weights_digest(Kronos.from_pretrained(start)) == first_weights
    assert params["kronos.refit.train_tokenizer"] == "False", "a refit trains the predictor stage only"
    assert tags["kronos.rolling.weights"] == weights_digest(second.load_object("params.pkl").model) != first_weights


def test_one_merged_signal_analysed_and_backtested(rolled):
    from qlib.data import D

    from kronos_qlib.evaluation import load_run, summarize

    _, run, _ = rolled
    merged = load_run(run.experiment, run.recorder_id)
    pred = merged.pred
    assert not pred.index.duplicated().any()
    days = pd.DatetimeIndex(D.calendar(start_time="2016-10-10", end_time=ENV["TEST_END"]))
    assert list(pred.index.get_level_values("datetime").unique()) == list(days)
    rolls = [recorder(run.roll_experiment, rid).load_object("pred.pkl") for rid in run.roll_ids]
    pd.testing.assert_frame_equal(pred, pd.concat(rolls).sort_index())
    assert len(merged.report) >= len(days) - 1 and merged.ic.notna().all()
    summary = summarize(merged)
    assert summary["turnover (daily mean)"] > 0 and pd.notna(summary["information ratio (with cost)"])
    tags = recorder(run.experiment, run.recorder_id).list_tags()
    assert tags["kronos.rolling.roll_recorders"] == ",".join(run.roll_ids)


def test_roll_tasks_refuse_leaks_and_bad_steps(rolled):
    from kronos_qlib.integration.rolling import roll_tasks
    from kronos_qlib.qrun import load_workflow

    task = load_workflow(WORKFLOWS / "kronos_csi300.yaml")["task"]  # rendered under the fixture's environment
    with pytest.raises(KronosInputError, match="at least 1"):
        roll_tasks(task, 0)
    with pytest.raises(KronosInputError, match="fewer than one step"):
        roll_tasks(task, 7)
    task["dataset"]["kwargs"]["segments"]["valid"] = ["2016-07-01", "2016-10-12"]  # reaches into test
    with pytest.raises(KronosInputError, match="valid segment"):
        roll_tasks(task, STEP)


def test_command_line_rejects_a_bad_step(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k not in VARIABLES}, **ENV, "QLIB_DATA": str(CN_DATA)}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "rolling.py"), "--step", "0"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "step must be at least 1 trading day, got 0" in result.stderr, result.stderr
