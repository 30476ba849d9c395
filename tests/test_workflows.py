"""The shipped workflow files, read exactly as qrun reads them and run by the real `qrun` at the smoke scale.

Nothing here rewrites a workflow: each file is rendered by Qlib's own ``render_template`` (the whole text is a
Jinja template, comments included) and run by the ``qrun`` command, changed only through the environment
variables the file reads (``workflows/smoke.env``, QLIB_DATA, KRONOS_CACHE).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kronos_qlib.qrun import WORKFLOWS, load_workflow, smoke_env

from conftest import (CN_DATA, FACTOR_SMOKE, FACTOR_WORKFLOW, GRU_SMOKE, HEAD_WORKFLOW, QRUN_WORKFLOWS, REPO, study,
                      study_env)

VARIABLES = ["QLIB_DATA", "KRONOS_CACHE", "KRONOS_PRESET", "TRAIN_START", "TRAIN_END", "VALID_START", "VALID_END",
             "TEST_START", "TEST_END", "BACKTEST_END", "KRONOS_TRAIN_START", "KRONOS_TRAIN_END", "KRONOS_VALID_START",
             "KRONOS_VALID_END", "FACTOR_TRAIN_START", "KRONOS_SAMPLES", "SEED", "SAMPLE_SEED", "KRONOS_REVISION"]


def render(path, env: dict) -> dict:
    """The file as qrun reads it under ``env`` and nothing else of the caller's environment."""
    return load_workflow(path, env, inherit=False)


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_file_renders_as_qrun_reads_it(path, monkeypatch):
    assert isinstance(render(path, {}), dict)


def dates(config: dict) -> dict:
    task = config["task"]
    backtest = next(r for r in task["record"] if r["class"] == "PortAnaRecord")["kwargs"]["config"]["backtest"]
    handler = task["dataset"]["kwargs"]["handler"]["kwargs"]
    return {"segments": task["dataset"]["kwargs"]["segments"], "backtest": [backtest["start_time"],
            backtest["end_time"]], "handler": [handler["start_time"], handler["end_time"]]}


@pytest.mark.parametrize("env,expected", [
    ({}, {"train": ["2010-01-01", "2017-12-31"], "valid": ["2018-01-01", "2019-12-31"],
          "test": ["2020-01-01", "2022-12-30"], "backtest_end": "2022-12-29"}),
    (smoke_env(), {"train": ["2016-01-01", "2016-06-30"], "valid": ["2016-07-01", "2016-09-30"],
                   "test": ["2016-10-10", "2016-11-04"], "backtest_end": "2016-11-03"}),
], ids=["defaults", "smoke"])
def test_the_workflows_take_the_same_dates_costs_and_strategy_from_the_environment(env, expected):
    kronos, lgb, gru = (render(WORKFLOWS / name, env) for name in QRUN_WORKFLOWS)
    assert dates(kronos) == dates(lgb) == dates(gru)
    got = dates(kronos)
    assert got["segments"] == {k: expected[k] for k in ("train", "valid", "test")}
    assert got["backtest"] == [expected["test"][0], expected["backtest_end"]]
    assert got["handler"] == [expected["train"][0], expected["test"][1]]
    for baseline in (lgb, gru):  # the processors are fitted on the training segment only
        handler = baseline["task"]["dataset"]["kwargs"]["handler"]["kwargs"]
        assert [handler["fit_start_time"], handler["fit_end_time"]] == expected["train"]
    assert kronos["port_analysis_config"] == lgb["port_analysis_config"] == gru["port_analysis_config"]
    head = render(WORKFLOWS / HEAD_WORKFLOW, env)
    assert dates(head) == dates(kronos) and head["port_analysis_config"] == kronos["port_analysis_config"]
    for config in (kronos, lgb, gru):  # the handlers check the data for exactly the backtest's benchmark and end
        handler = config["task"]["dataset"]["kwargs"]["handler"]["kwargs"]
        assert (handler["benchmark"], handler["backtest_end"]) == ("SH000300", expected["backtest_end"])


def test_gru_workflow_is_the_zoos_model_with_an_epoch_cap():
    """Qlib's benchmark GRU / Alpha360 settings; GRU_EPOCHS caps the epochs, SEED seeds it."""
    model = render(WORKFLOWS / "gru_alpha360_csi300.yaml", {})["task"]["model"]
    assert (model["class"], model["module_path"]) == ("GRU", "qlib.contrib.model.pytorch_gru")
    assert model["kwargs"] == {"d_feat": 6, "hidden_size": 64, "num_layers": 2, "dropout": 0.0, "n_epochs": 200,
                               "lr": 1e-3, "early_stop": 20, "batch_size": 800, "metric": "loss", "loss": "mse",
                               "GPU": 0, "seed": 42}
    capped = render(WORKFLOWS / "gru_alpha360_csi300.yaml", {**GRU_SMOKE, "SEED": "44"})["task"]["model"]["kwargs"]
    assert (capped["n_epochs"], capped["seed"]) == (1, 44)
    handler = render(WORKFLOWS / "gru_alpha360_csi300.yaml", {})["data_handler_config"]
    assert handler["infer_processors"] == [
        {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
        {"class": "Fillna", "kwargs": {"fields_group": "feature"}}]
    assert handler["learn_processors"] == [{"class": "DropnaLabel"},
                                           {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}]
    assert handler["label"] == ["Ref($close, -2) / Ref($close, -1) - 1"]


@pytest.mark.parametrize("env", [{}, smoke_env(), {**smoke_env(), **FACTOR_SMOKE}], ids=["defaults", "smoke", "factor"])
def test_factor_workflow_tests_and_trades_like_the_others_and_starts_after_kronos(monkeypatch, env):
    lgb, factor = (render(WORKFLOWS / name, env) for name in ("lightgbm_csi300.yaml", FACTOR_WORKFLOW))
    assert dates(factor)["segments"]["test"] == dates(lgb)["segments"]["test"]
    assert dates(factor)["backtest"] == dates(lgb)["backtest"]
    assert factor["port_analysis_config"] == lgb["port_analysis_config"]
    assert factor["task"]["model"] == lgb["task"]["model"]
    handler = factor["task"]["dataset"]["kwargs"]["handler"]["kwargs"]
    segments = factor["task"]["dataset"]["kwargs"]["segments"]
    assert handler["start_time"] == segments["train"][0] == handler["fit_start_time"]
    assert max(handler["kronos_segments"]["valid"][1], handler["kronos_segments"]["train"][1]) < handler["start_time"]


def test_kronos_workflow_sets_each_setting_once(monkeypatch):
    config = render(WORKFLOWS / "kronos_csi300.yaml", {"KRONOS_PRESET": "small", "QLIB_DATA": "/data"})
    kwargs = config["task"]["model"]["kwargs"]
    assert config["qlib_init"]["provider_uri"] == "/data"
    assert kwargs["finetune"] == {"preset": "small", "seed": 42,
                                  "output_dir": "runs/kronos_csi300_small_2010-01-01_2019-12-31_seed42",
                                  "revision": None}
    assert kwargs["sampling"]["seed"] == 0
    assert config["task"]["dataset"]["kwargs"]["handler"]["kwargs"]["history"] == kwargs["forecast"]["lookback"]
    assert kwargs["cache_dir"] == "~/.cache/kronos_qlib/forecasts"


def test_kronos_revision_reaches_every_kronos_workflow():
    """KRONOS_REVISION pins the checkpoints each Kronos workflow starts from; unset, they are the latest."""
    for env, expected in (({}, None), ({"KRONOS_REVISION": "released"}, "released"),
                          ({"KRONOS_REVISION": "123"}, "123")):
        kronos = render(WORKFLOWS / "kronos_csi300.yaml", env)["task"]["model"]["kwargs"]
        head = render(WORKFLOWS / HEAD_WORKFLOW, env)["task"]["model"]["kwargs"]
        factors = render(WORKFLOWS / FACTOR_WORKFLOW, env)["task"]["dataset"]["kwargs"]["handler"]["kwargs"]["kronos"]
        assert [kronos["revision"], kronos["finetune"]["revision"], head["finetune"]["revision"],
                factors["finetune"]["revision"]] == [expected] * 4


def test_head_workflow_shares_the_path_workflows_stages_and_samples_no_paths():
    """Same finetuning (so the same generative stage folders), the same windows, handler and records; the signal
    is the head's, so no sampling settings are read."""
    for env in ({}, smoke_env(), {"SEED": "43", "KRONOS_PRESET": "small"}):
        paths, head = (render(WORKFLOWS / name, env)["task"] for name in ("kronos_csi300.yaml", HEAD_WORKFLOW))
        assert head["model"]["kwargs"]["finetune"] == paths["model"]["kwargs"]["finetune"]
        assert head["model"]["kwargs"]["forecast"] == paths["model"]["kwargs"]["forecast"]
        assert head["dataset"] == paths["dataset"] and head["record"] == paths["record"]
    kwargs = render(WORKFLOWS / HEAD_WORKFLOW, {})["task"]["model"]["kwargs"]
    assert kwargs["signal"] == "head" and "sampling" not in kwargs


def test_shipped_head_is_the_recorded_valid_choice():
    """The head workflow's head is the candidate research/head_study.py chose on valid, setting for setting."""
    import dataclasses

    from kronos_qlib.training.head import HeadConfig

    record = json.loads((REPO / "research" / "head_study.json").read_text())
    chosen = record["choice"]["chosen"]
    shipped = render(WORKFLOWS / HEAD_WORKFLOW, {})["task"]["model"]["kwargs"]["head"]
    assert dataclasses.asdict(HeadConfig.build(shipped, "the head workflow")) == record["candidates"][chosen]


def test_shipped_sampling_is_the_recorded_valid_choice_in_both_kronos_workflows():
    """T and top_p are what research/calibration.py chose on valid (its section of the findings page
    research/RESULTS.md: the study keeps no other record of its choice), and the factor workflow's Kronos samples
    like the Kronos workflow."""
    import re

    results = (REPO / "research" / "RESULTS.md").read_text()
    chosen = re.search(r"Chosen on valid: \*\*T=([\d.]+), top_p=([\d.]+),", results)
    kronos = render(WORKFLOWS / "kronos_csi300.yaml", {})["task"]["model"]["kwargs"]["sampling"]
    assert (kronos["T"], kronos["top_p"]) == (float(chosen[1]), float(chosen[2]))
    factors = render(WORKFLOWS / FACTOR_WORKFLOW, {})["task"]["dataset"]["kwargs"]["handler"]["kwargs"]["kronos"]
    assert factors["sampling"] == kronos


def test_the_library_samples_as_the_shipped_workflows_do():
    """Sampling()'s defaults, what KronosPredictor.predict_paths and KronosModel use unless told otherwise, are the
    Kronos workflows' sampling: one value per setting."""
    from kronos_qlib import Sampling

    for name in ("kronos_csi300.yaml", FACTOR_WORKFLOW):
        kwargs = render(WORKFLOWS / name, {})["task"]
        kronos = kwargs["model"]["kwargs"] if name == "kronos_csi300.yaml" else \
            kwargs["dataset"]["kwargs"]["handler"]["kwargs"]["kronos"]
        assert Sampling.build(kronos["sampling"], name) == Sampling()


def test_seed_variables_reach_every_seeded_part(monkeypatch):
    """SEED and SAMPLE_SEED (research/seeds.py's seed k) change Kronos's training seed and its stage folder, its
    sampling seed and LightGBM's seed, in each workflow that has them; nothing else moves."""
    env = {"SEED": "43", "SAMPLE_SEED": "1"}
    kronos = render(WORKFLOWS / "kronos_csi300.yaml", env)["task"]["model"]["kwargs"]
    assert kronos["finetune"] == {"preset": "cpu", "seed": 43,
                                  "output_dir": "runs/kronos_csi300_cpu_2010-01-01_2019-12-31_seed43",
                                  "revision": None}
    assert kronos["sampling"]["seed"] == 1
    lgb = render(WORKFLOWS / "lightgbm_csi300.yaml", env)
    assert lgb["task"]["model"]["kwargs"]["seed"] == 43
    assert render(WORKFLOWS / "lightgbm_csi300.yaml", {})["task"]["model"]["kwargs"]["seed"] == 42
    factors = render(WORKFLOWS / FACTOR_WORKFLOW, env)
    handler_kronos = factors["task"]["dataset"]["kwargs"]["handler"]["kwargs"]["kronos"]
    assert handler_kronos["finetune"]["seed"] == 43 and handler_kronos["finetune"]["output_dir"].endswith("_seed43")
    assert handler_kronos["sampling"]["seed"] == 1 and factors["task"]["model"]["kwargs"]["seed"] == 43
    default = render(WORKFLOWS / "kronos_csi300.yaml", {})["task"]["model"]["kwargs"]
    assert {k: v for k, v in default.items() if k not in ("finetune", "sampling")} == \
        {k: v for k, v in kronos.items() if k not in ("finetune", "sampling")}


# --------------------------------------------------------------------------------------- qrun, smoke scale
@pytest.mark.parametrize("experiment", ["kronos_csi300", "lightgbm_csi300", "gru_alpha360_csi300",
                                        "kronos_lightgbm_csi300", "kronos_head_csi300"])
def test_recorded_signal_and_portfolio(recorded, experiment):
    from kronos_qlib.evaluation import init_recorder_store, load_run, summarize

    init_recorder_store(f"sqlite:///{recorded[0] / 'mlruns.db'}")
    run = load_run(experiment)
    assert len(run.ic) >= 15 and run.ic.notna().all(), run.ic
    assert len(run.report) >= 15
    summary = summarize(run)
    for key in ("IC", "ICIR", "RankIC", "excess return (ann., with cost)", "information ratio (with cost)",
                "max drawdown (with cost)", "turnover (daily mean)"):
        assert math.isfinite(summary[key]), (key, summary)
    assert summary["turnover (daily mean)"] > 0


def test_qrun_output_shows_what_kronos_does_and_stays_readable(recorded):
    tmp, logs = recorded
    first, again = logs["kronos_csi300.yaml"], logs["again"]
    folder = Path("runs") / "kronos_csi300_tiny_2016-01-01_2016-09-30_seed42"  # output_dir, relative to where qrun ran
    for stage in ("tokenizer", "predictor"):
        assert f"{stage} stage: " in first and f"training in {folder / stage}" in first
        assert f"{stage} epoch 1/1: " in first
        assert f"{stage} stage reused: {folder / stage / 'best'}" in again
    assert "sampled" in first and "from the cache" in first
    assert "0 sampled" in again, "the second run reads every forecast from the cache"
    # progress bars redrawn into a file: a few lines, not one per step
    assert len(first) < 100_000 and first.count("\r") < 200, (len(first), first.count("\r"))


def test_head_workflow_trains_only_the_head_and_samples_nothing(recorded):
    """The head workflow reuses the path workflow's generative stages, trains its head stage (reused the second
    time), scores with one forward pass per stock-day (cached) and logs the head's curve to the recorder."""
    from qlib.workflow import R

    from kronos_qlib.evaluation import init_recorder_store, load_run

    tmp, logs = recorded
    first, again = logs[HEAD_WORKFLOW], logs["head again"]
    folder = Path("runs") / "kronos_csi300_tiny_2016-01-01_2016-09-30_seed42"
    for stage in ("tokenizer", "predictor"):
        assert f"{stage} stage reused: {folder / stage / 'best'}" in first
    assert "head probe H1 epoch 1/20" in first and "head stage finished" in first
    assert "head stage reused" in again and "head probe H1 epoch" not in again
    assert "Kronos forecasts" not in first + again, "the head workflow samples no paths"
    assert "(0 computed, " in again and "(0 computed, " not in first
    init_recorder_store(f"sqlite:///{tmp / 'mlruns.db'}")
    run = load_run("kronos_head_csi300")
    assert {"head/train_loss", "head/valid_loss"} <= set(run.curves.columns)
    params = R.get_recorder(recorder_id=run.recorder_id, experiment_name="kronos_head_csi300").list_params()
    assert params["kronos.finetune_head.variant"] == "probe" and params["kronos.finetune_head.horizon"] == "1"
    model = R.get_recorder(recorder_id=run.recorder_id, experiment_name="kronos_head_csi300").load_object("params.pkl")
    from kronos_qlib.model.hub import weights_digest
    assert params["kronos.weights.head"] == weights_digest(model.head)
    assert params["kronos.weights.predictor"] == weights_digest(model.model)


def test_training_curves_and_settings_are_in_the_recorder(recorded):
    """Under qrun, KronosModel logs each epoch of both stages, its resolved settings and its checkpoints."""
    from qlib.workflow import R

    from kronos_qlib.evaluation import init_recorder_store, load_run

    init_recorder_store(f"sqlite:///{recorded[0] / 'mlruns.db'}")
    run = load_run("kronos_csi300")
    for column in ("tokenizer/train_loss", "tokenizer/valid_recon", "tokenizer/valid_bsq", "predictor/train_loss",
                   "predictor/valid_s1", "predictor/valid_s2", "predictor/lr"):
        assert column in run.curves and run.curves[column].notna().all(), (column, run.curves.columns)
    assert list(run.curves.index) == [1], "the tiny preset trains one epoch per stage"
    recorder = R.get_recorder(recorder_id=run.recorder_id, experiment_name="kronos_csi300")
    params, tags = recorder.list_params(), recorder.list_tags()
    assert params["kronos.finetune.preset"] == "tiny" and params["kronos.sampling.sample_count"] == "5"
    assert params["kronos.forecast.lookback"] == "90" and params["kronos.finetune.tokenizer_config.d_model"] == "32"
    folder = recorded[0] / "runs" / "kronos_csi300_tiny_2016-01-01_2016-09-30_seed42"
    assert tags["kronos.predictor_checkpoint"] == str(folder / "predictor" / "best")


def test_forecast_quality_of_the_recorded_run(recorded):
    out = recorded[0] / "quality"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_forecasts.py"), "--run", "kronos_csi300",
                             "--mlflow-uri", f"sqlite:///{recorded[0] / 'mlruns.db'}", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "table.md").read_text()
    assert "crps_skill_vs_rw" in table and "random_walk" in table
    assert {p.name for p in out.glob("*.png")} >= {"coverage.png", "pit.png", "crps.png"}


def test_compare_script(recorded):
    out = recorded[0] / "compare"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "--mlflow-uri",
                             f"sqlite:///{recorded[0] / 'mlruns.db'}", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    assert "| kronos_csi300 |" in table and "| lightgbm_csi300 |" in table and "nan" not in table.lower()
    assert "| gru_alpha360_csi300 |" in table and "| kronos_lightgbm_csi300 |" in table
    assert "| kronos_head_csi300 |" in table
    assert "not recorded here, left out: ensemble_csi300" in result.stderr
    paired = table.split("Paired against lightgbm_csi300, day by day")[1]
    assert all(f"| {name} | " in paired for name in ("kronos_csi300", "kronos_head_csi300", "gru_alpha360_csi300"))
    assert "| lightgbm_csi300 | " not in paired
    assert (out / "cumulative_excess.png").stat().st_size > 10_000
    assert (out / "kronos_csi300_training.png").stat().st_size > 10_000
    assert not (out / "lightgbm_csi300_training.png").exists(), "LightGBM logs no epochs"
    assert (out / "comparison.csv").exists()


def test_compare_names_a_missing_experiment(recorded):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "--mlflow-uri",
                             f"sqlite:///{recorded[0] / 'mlruns.db'}", "--experiments", "nope", "--out",
                             str(recorded[0] / "x")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no recorded experiment 'nope'" in result.stderr


def test_factor_workflow_feeds_lightgbm_the_kronos_features(recorded):
    """The recorded factor run's model was trained on Alpha158's 158 columns plus the 7 Kronos ones."""
    from qlib.workflow import R

    from kronos_qlib.evaluation import init_recorder_store, load_run

    log = recorded[1][FACTOR_WORKFLOW]
    assert ("(KRONOS_RET1, KRONOS_RET2, KRONOS_RET5, KRONOS_RET10, KRONOS_PROB_UP, KRONOS_DISPERSION, KRONOS_VOL)"
            in log) and "Kronos trained on targets up to 2016-05-31" in log
    init_recorder_store(f"sqlite:///{recorded[0] / 'mlruns.db'}")
    run = load_run("kronos_lightgbm_csi300")
    model = R.get_recorder(recorder_id=run.recorder_id, experiment_name=run.experiment).load_object("params.pkl")
    assert model.model.num_feature() == 158 + 7


def test_ensemble_and_the_three_side_by_side(recorded):
    """scripts/ensemble.py records the combination (here with the weight chosen on the last valid days, the
    option), and compare.py shows it beside both models with Kronos's correlation with LightGBM and its partial
    IC."""
    tmp, uri = recorded[0], f"sqlite:///{recorded[0] / 'mlruns.db'}"
    env = {**os.environ, **smoke_env(), "QLIB_DATA": str(CN_DATA)}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "ensemble.py"), "--mlflow-uri", uri,
                             "--weight", "valid", "--valid-from", "2016-09-26"], capture_output=True, text=True,
                            timeout=900, env=env, cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Kronos weight " in result.stdout and "of experiment 'ensemble_csi300'" in result.stdout
    from kronos_qlib.evaluation import init_recorder_store, load_run, summarize

    init_recorder_store(uri)
    run = load_run("ensemble_csi300")
    assert len(run.ic) >= 15 and math.isfinite(summarize(run)["information ratio (with cost)"])
    out = tmp / "compare3"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "--mlflow-uri", uri, "--out",
                             str(out), "--experiments", "kronos_csi300", "lightgbm_csi300", "ensemble_csi300",
                             "kronos_lightgbm_csi300"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    for name in ("kronos_csi300", "lightgbm_csi300", "ensemble_csi300", "kronos_lightgbm_csi300"):
        assert f"| {name} |" in table
    assert "Daily rank correlation of kronos_csi300 with lightgbm_csi300" in table
    assert "partial RankIC " in table and "nan" not in table.lower()


@pytest.mark.parametrize("kronos, baseline, experiment", [
    ("kronos_head_csi300", "lightgbm_csi300", "ensemble_head_csi300"),
    ("kronos_head_csi300", "gru_alpha360_csi300", "ensemble_head_gru_csi300"),
    ("kronos_csi300", "gru_alpha360_csi300", "ensemble_gru_csi300")])
def test_ensemble_of_each_kronos_signal_with_each_baseline(recorded, kronos, baseline, experiment):
    """The documented blends at equal weights: the head with LightGBM and with GRU, and Kronos's paths with GRU,
    the model that reads the same bars (Kronos paths + LightGBM: test_ensemble_backtest)."""
    from qlib.workflow import R

    from kronos_qlib.evaluation import init_recorder_store, load_run, summarize

    tmp, uri = recorded[0], f"sqlite:///{recorded[0] / 'mlruns.db'}"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "ensemble.py"), "--mlflow-uri", uri,
                             "--kronos", kronos, "--kronos-workflow", str(WORKFLOWS / f"{kronos}.yaml"),
                             "--baseline", baseline, "--baseline-workflow", str(WORKFLOWS / f"{baseline}.yaml"),
                             "--experiment", experiment],
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, **smoke_env(), "QLIB_DATA": str(CN_DATA)}, cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"of experiment '{experiment}'" in result.stdout
    init_recorder_store(uri)
    run = load_run(experiment)
    assert len(run.ic) >= 15 and math.isfinite(summarize(run)["information ratio (with cost)"])
    params = R.get_recorder(recorder_id=run.recorder_id, experiment_name=run.experiment).list_params()
    assert params["ensemble.kronos_run"].startswith(kronos) and params["ensemble.baseline_run"].startswith(baseline)


def test_ensemble_refuses_runs_outside_the_test_dates_it_renders(recorded):
    tmp, uri = recorded[0], f"sqlite:///{recorded[0] / 'mlruns.db'}"
    env = {**os.environ, **smoke_env(), "QLIB_DATA": str(CN_DATA), "TEST_START": "2016-10-17"}
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "ensemble.py"), "--mlflow-uri", uri],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert result.returncode == 2 and "outside the test segment 2016-10-17..2016-11-04" in result.stderr


def load_bench_seeds(monkeypatch):
    """The seeds study, research/seeds.py (each test's monkeypatching of it is undone after the test)."""
    from research import seeds

    return seeds


def test_bench_seeds_zoo_dates_are_the_zoos_segments(monkeypatch):
    """`python -m research.seeds --dates zoo` runs the baselines on Qlib's model-zoo segments as far as the data
    allows."""
    zoo = load_bench_seeds(monkeypatch).DATES["zoo"]
    for name in ("lightgbm_csi300.yaml", "gru_alpha360_csi300.yaml"):
        got = dates(render(WORKFLOWS / name, zoo.env))
        assert got == {"segments": {"train": ["2010-01-01", "2014-12-31"], "valid": ["2015-01-01", "2016-12-31"],
                                    "test": ["2017-01-01", "2020-07-31"]},
                       "backtest": ["2017-01-01", "2020-07-31"], "handler": ["2010-01-01", "2020-07-31"]}
    assert set(zoo.published) == {"lightgbm", "gru"} and zoo.steps == ("lightgbm", "gru")
    refused = subprocess.run(study("seeds", "--dates", "zoo", "--steps", "lightgbm", "factors"), capture_output=True,
                             text=True, timeout=300, env=study_env())
    assert refused.returncode == 2 and "--dates zoo runs only the steps lightgbm, gru, not factors" in refused.stderr


@pytest.mark.parametrize("env", [{}, {**smoke_env(), **FACTOR_SMOKE}], ids=["defaults", "smoke"])
def test_bench_seeds_control_is_lightgbm_on_the_factor_workflows_rows(env, monkeypatch):
    """The control of the factor workflow (research/seeds.py) is LightGBM / Alpha158 alone with the factor
    workflow's segments, handler range and backtest: the difference between the two is the Kronos factors only."""
    bench_seeds = load_bench_seeds(monkeypatch)
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    control_env = bench_seeds.step_env("control", env)
    assert control_env["TRAIN_START"] != "2010-01-01" and bench_seeds.step_env("lightgbm", env) == env
    control = render(WORKFLOWS / "lightgbm_csi300.yaml", control_env)
    factors = render(WORKFLOWS / FACTOR_WORKFLOW, env)
    assert dates(control) == dates(factors)
    assert control["task"]["model"] == factors["task"]["model"]


def test_bench_seeds_records_each_seed_as_it_finishes_and_credits_it_to_its_commit(tmp_path, monkeypatch):
    """A step that finished in an earlier invocation is re-read, not re-run; each seed is recorded as soon as it
    finishes with the machine and commit it ran on (not those of a later invocation); a seed recorded for the study
    counts as done; and a new study replaces a step's seeds and daily series whole, never mixing two studies."""
    bench_seeds = load_bench_seeds(monkeypatch)
    folder = tmp_path / "seed0"
    folder.mkdir()
    earlier = {"wall_s": 60.0, "env": {}, "machine": "earlier machine, commit aaaaaaa", "note": "cache reused"}
    (folder / "lightgbm.json").write_text(json.dumps(earlier))
    monkeypatch.setattr(bench_seeds.subprocess, "run", lambda *a, **k: pytest.fail("a finished step ran again"))
    dates = bench_seeds.Dates("t", {}, "", tmp_path / "r.json", tmp_path / "d.csv", "t", tmp_path / "p.png", {})
    day = pd.DataFrame({"IC": [0.1], "RankIC": [0.1], "excess": [0.0]}, index=pd.DatetimeIndex(["2020-01-02"],
                                                                                                 name="datetime"))
    bench_seeds.record_seed(0, "old", {"lightgbm": {"IC": 0.3}}, {"lightgbm": earlier}, {"lightgbm": day}, dates)
    ran = {"lightgbm": bench_seeds.run_step("lightgbm", folder, {}, note="")}
    bench_seeds.record_seed(0, "new", {"lightgbm": {"IC": 0.1}}, ran, {"lightgbm": day}, dates)
    records, merged = bench_seeds.record_seed(1, "new", {"lightgbm": {"IC": 0.2}},
                                              {"lightgbm": {**earlier, "machine": "later machine, commit bbbbbbb",
                                                            "note": ""}}, {"lightgbm": day * 2}, dates)
    assert records == json.loads(dates.records.read_text())
    assert records["lightgbm"]["study"] == "new" and set(records["lightgbm"]["seeds"]) == {"0", "1"}
    assert records["lightgbm"]["seeds"]["0"]["wall_s"] == 60.0
    assert bench_seeds.recorded(records, "lightgbm", "new", 1) and not bench_seeds.recorded(records, "lightgbm",
                                                                                            "new", 2)
    assert not bench_seeds.recorded(records, "lightgbm", "old", 0)
    assert bench_seeds.measured_on(records) == {"earlier machine, commit aaaaaaa; cache reused": ["`lightgbm` (study "
                                                                                                 "`new`)"],
                                                "later machine, commit bbbbbbb": ["`lightgbm` (study `new`)"]}
    daily = bench_seeds.read_daily(dates.daily)
    assert sorted(daily["seed"]) == [0, 1] and daily["IC"].tolist() == [0.1, 0.2]
    pd.testing.assert_frame_equal(merged, daily, check_dtype=False)
    assert bench_seeds.with_needs(["ensemble"], list(bench_seeds.STEPS)) == ["kronos", "lightgbm", "ensemble"]


def test_bench_seeds_keeps_another_studys_seeds_only_when_a_seed_reproduces_them(tmp_path, monkeypatch):
    """A new study's seed equal metric for metric to the seed another study recorded ran the same experiment: the
    other seeds join the new study; a seed that differs in any metric replaces the step whole."""
    bench_seeds = load_bench_seeds(monkeypatch)
    dates = bench_seeds.Dates("t", {}, "", tmp_path / "r.json", tmp_path / "d.csv", "t", tmp_path / "p.png", {})
    ran = {"gru": {"wall_s": 1.0, "machine": "m", "note": ""}}
    day = pd.DataFrame({"IC": [0.1], "RankIC": [0.1], "excess": [0.0]},
                       index=pd.DatetimeIndex(["2020-01-02"], name="datetime"))
    for k, ic in ((0, 0.3), (1, 0.4)):
        bench_seeds.record_seed(k, "old", {"gru": {"IC": ic, "RankIC": 0.5}}, ran, {"gru": day * (k + 1)}, dates)
    records, daily = bench_seeds.record_seed(0, "new", {"gru": {"IC": 0.3, "RankIC": 0.5}}, ran, {"gru": day}, dates)
    assert records["gru"]["study"] == "new" and set(records["gru"]["seeds"]) == {"0", "1"}
    assert bench_seeds.recorded(records, "gru", "new", 1) and sorted(daily["seed"]) == [0, 1]
    records, daily = bench_seeds.record_seed(0, "newer", {"gru": {"IC": 0.3, "RankIC": 0.5000001}}, ran,
                                             {"gru": day}, dates)
    assert records["gru"]["study"] == "newer" and set(records["gru"]["seeds"]) == {"0"}
    assert sorted(daily["seed"]) == [0]


def test_bench_seeds_notes_what_a_step_reused(tmp_path, monkeypatch):
    """A study that reuses an earlier one's trainings (--trained-from) or forecasts (--cache) says so beside the
    wall times of the steps that train or sample Kronos, and refuses a source without a seed's trainings."""
    import argparse

    bench_seeds = load_bench_seeds(monkeypatch)
    args = argparse.Namespace(stages=None, trained_from="old", cache="shared", gru_epochs=10)
    assert "copied from old/seed1/runs" in bench_seeds.step_note("factors", 1, args)
    assert "shared was filled before" in bench_seeds.step_note("ensemble_valid", 1, args)
    assert bench_seeds.step_note("lightgbm", 1, args) == ""
    (tmp_path / "old" / "seed0" / "runs").mkdir(parents=True)
    refused = subprocess.run(study("seeds", "--work", str(tmp_path / "new"), "--trained-from", str(tmp_path / "old"),
                                   "--steps", "lightgbm"), capture_output=True, text=True, timeout=300, env=study_env())
    assert refused.returncode == 2 and "has no seed1/runs to reuse" in refused.stderr
    assert not (tmp_path / "new").exists()


def test_bench_seeds_pairs_two_runs_on_the_seeds_both_ran(monkeypatch):
    """A paired line averages both runs over the same seeds: a seed only one of them ran (a study cut short, a step
    kept from another study) would unpair them."""
    bench_seeds = load_bench_seeds(monkeypatch)
    days = pd.bdate_range("2020-01-01", periods=30)
    rng = np.random.default_rng(0)
    frames = [pd.DataFrame({"step": step, "seed": seed, "datetime": days, "IC": 0.0,
                            "RankIC": rng.normal(0, 0.01, len(days)) + (0.5 if seed == 2 else 0.0),
                            "excess": rng.normal(0, 1e-3, len(days))})
              for step, seeds in (("kronos", (0, 1, 2)), ("gru", (0, 1))) for seed in seeds]
    daily = pd.concat(frames, ignore_index=True)
    line = bench_seeds.paired_line(daily, "kronos", "gru")
    assert line.endswith("over the mean of seeds 0, 1")
    assert abs(float(line.split("RankIC ")[1].split(" ")[0])) < 0.05  # seed 2's +0.5 left out
    assert bench_seeds.paired_line(daily[daily["seed"] != 2].assign(seed=lambda f: f["seed"].where(
        f["step"] == "kronos", 5)), "kronos", "gru").startswith("no seed in common")


def test_bench_seeds_records_only_the_missing_steps(tmp_path, monkeypatch):
    """A recorded step that a later invocation re-reads for another step's sake (Kronos for the Kronos + GRU
    ensemble) keeps its recorded row: re-read without LightGBM it would lose its partial IC given LightGBM. One
    that had to run again (its folder gone) is recorded anew, since the ensemble now reads that run."""
    import dataclasses

    bench_seeds = load_bench_seeds(monkeypatch)
    dates = dataclasses.replace(bench_seeds.DATES["default"], records=tmp_path / "r.json", daily=tmp_path / "d.csv")
    monkeypatch.setitem(bench_seeds.DATES, "default", dates)
    day = pd.DataFrame({"IC": [0.1], "RankIC": [0.1], "excess": [0.0]},
                       index=pd.DatetimeIndex(["2020-01-02"], name="datetime"))
    ran = {"wall_s": 1.0, "machine": "m", "note": ""}
    for k in (0, 1):
        bench_seeds.record_seed(k, "work", {"kronos": {"IC": 0.01, "partial IC": 0.002}}, {"kronos": ran},
                                {"kronos": day}, dates)
    for name in bench_seeds.SCALE_VARIABLES:  # main drops them from the environment
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(bench_seeds, "run_step", lambda name, *a: ran)
    monkeypatch.setattr(bench_seeds, "seed_metrics", lambda folder, provider, steps: (
        {step: {"IC": 0.01} for step in steps}, {step: day for step in steps}))
    monkeypatch.setattr(bench_seeds, "report", lambda *a: "")
    monkeypatch.setattr(bench_seeds, "update_section", lambda *a: None)
    monkeypatch.setattr(sys, "argv", ["seeds.py", "--work", str(tmp_path / "work"), "--seeds", "2",
                                      "--steps", "kronos", "gru", "ensemble_gru"])
    (tmp_path / "work" / "seed0").mkdir(parents=True)
    (tmp_path / "work" / "seed0" / "kronos.json").write_text(json.dumps(ran))  # seed 1's Kronos must run again
    bench_seeds.main()
    records = json.loads(dates.records.read_text())
    assert {step: set(records[step]["seeds"]) for step in records} == {step: {"0", "1"} for step in
                                                                       ("kronos", "gru", "ensemble_gru")}
    assert records["kronos"]["seeds"]["0"]["partial IC"] == 0.002
    assert "partial IC" not in records["kronos"]["seeds"]["1"]
    assert bench_seeds.with_needs(["kronos"], ["kronos", "lightgbm", "gru"]) == ["kronos", "lightgbm"]
    assert bench_seeds.with_needs(["kronos"], ["kronos", "gru"]) == ["kronos"]
    # the head + GRU blend re-runs the head in a fresh folder: the head's row reads LightGBM beside it
    assert bench_seeds.with_needs(["ensemble_head_gru"], ["lightgbm", "gru", "head", "ensemble_head_gru"]) == [
        "lightgbm", "gru", "head", "ensemble_head_gru"]


def test_head_against_path_volatility_on_the_recorded_runs(recorded, tmp_path):
    """research.head_volatility reads the head run and the path forecasts of one folder (sampling nothing: the path
    workflow cached them) and reports the head, path volatility and the neutralised head, each with its book."""
    tmp, _ = recorded
    env = study_env({**os.environ, **smoke_env(), "QLIB_DATA": str(CN_DATA), "KRONOS_CACHE": str(tmp / "forecasts")})
    result = subprocess.run(study("head_volatility", "--work", str(tmp), "--provider", str(CN_DATA), "--out",
                                  str(tmp_path)), capture_output=True, text=True, env=env, cwd=tmp, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(0 sampled, " in result.stderr, "the path workflow's forecasts are read from its cache"
    record = json.loads((tmp_path / "head_volatility.json").read_text())
    assert list(record["table"]) == ["head", "path volatility (low_forecast_risk)",
                                     "head neutralised against path volatility"]
    for row in record["table"].values():
        assert math.isfinite(row["RankIC"]) and math.isfinite(row["excess with cost t"])
    assert "## The head against path volatility on test" in (tmp_path / "head_study.md").read_text()
    assert (tmp_path / "head_volatility.png").stat().st_size > 0


def test_neutralised_head_is_uncorrelated_with_its_control_each_day():
    from research.head_volatility import neutralised

    rng = np.random.default_rng(0)
    index = pd.MultiIndex.from_product([pd.bdate_range("2020-01-01", periods=5), [f"S{i}" for i in range(50)]],
                                       names=["datetime", "instrument"])
    control = pd.Series(rng.normal(size=len(index)), index=index)
    score = control + pd.Series(rng.normal(size=len(index)), index=index)
    out = neutralised(score, control)
    ranks = control.groupby(level="datetime").rank(pct=True)
    joined = pd.concat([out, ranks.rename("c")], axis=1)
    daily = joined.groupby(level="datetime").apply(lambda d: d["score"].corr(d["c"]))
    assert (daily.abs() < 1e-9).all() and out.groupby(level="datetime").std().gt(0.1).all()
