"""scripts/ensemble.py end to end on the shared smoke runs' LightGBM run (qrun) and a stand-in Kronos run: with
--weight 0 the ensemble's backtest is LightGBM's to the last number, without predicting valid; --weight valid
still chooses on valid RankIC.

The stand-in scores 70% of LightGBM's rows at random, one of them inf, plus a stock outside LightGBM's universe;
its model (``params.pkl``) predicts the valid label itself, so the valid choice must be Kronos alone.
"""
import importlib.util
import logging

import numpy as np
import pandas as pd
import pytest

from kronos_qlib.qrun import WORKFLOWS, load_workflow, smoke_env

from conftest import CN_DATA, REPO

ENV = {**smoke_env(), "QLIB_DATA": str(CN_DATA)}


class LabelOracle:
    """A recorded "model" whose prediction is the label of the segment: the best possible valid RankIC."""

    def predict(self, dataset, segment):
        from qlib.data.dataset.handler import DataHandlerLP

        return dataset.prepare(segment, col_set="label", data_key=DataHandlerLP.DK_R).iloc[:, 0]


#: the experiment of the stand-in Kronos run, beside the shared smoke runs' own Kronos run
STANDIN = "kronos_standin"


@pytest.fixture(scope="module")
def store(recorded) -> str:
    """The shared smoke runs' MLflow store, with a stand-in Kronos run of LightGBM's test days."""
    from qlib.workflow import R

    from kronos_qlib.evaluation import init_recorder_store, load_run
    from kronos_qlib.integration.ensemble import record_ensemble

    uri = f"sqlite:///{recorded[0] / 'mlruns.db'}"
    init_recorder_store(uri, str(CN_DATA))
    lgb = load_run("lightgbm_csi300").pred.iloc[:, 0]
    kronos = pd.Series(np.random.default_rng(0).normal(size=len(lgb)), index=lgb.index)
    kronos.iloc[0] = np.inf  # on LightGBM's first row, the one the warning names
    kronos = pd.concat([kronos.iloc[:1], kronos.iloc[1:].sample(frac=0.7, random_state=0)])
    days = lgb.index.get_level_values("datetime").unique()
    outside = pd.Series(3.0, index=pd.MultiIndex.from_product([days, ["SH600004"]], names=lgb.index.names))
    assert not lgb.index.isin(outside.index).any()
    config = load_workflow(WORKFLOWS / "lightgbm_csi300.yaml", ENV)
    recorder_id = record_ensemble(STANDIN, pd.concat([kronos, outside]).sort_index(),
                                  load_run("lightgbm_csi300").label, config["port_analysis_config"], {})
    R.get_recorder(recorder_id=recorder_id, experiment_name=STANDIN).save_objects(
        **{"params.pkl": LabelOracle()})
    return uri


@pytest.fixture()
def script(monkeypatch):
    """scripts/ensemble.py, run in this process with the variables the runs had."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("ensemble_script", REPO / "scripts" / "ensemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def params_of(experiment: str) -> dict:
    from qlib.workflow import R

    from kronos_qlib.evaluation import load_run

    run = load_run(experiment)
    return R.get_recorder(recorder_id=run.recorder_id, experiment_name=experiment).list_params()


def test_weight_zero_backtests_exactly_as_lightgbm_without_predicting_valid(store, script, monkeypatch, caplog):
    from kronos_qlib.evaluation import load_run

    def no_valid(*args):
        raise AssertionError("a declared weight must not predict the valid segment")

    monkeypatch.setattr(script, "valid_predictions", no_valid)
    with caplog.at_level(logging.WARNING, logger="kronos_qlib.integration.ensemble"):
        assert script.main(["--mlflow-uri", store, "--kronos", STANDIN, "--weight", "0",
                            "--experiment", "ensemble_w0"]) == 0
    ensemble, lgb = load_run("ensemble_w0"), load_run("lightgbm_csi300")
    day, instrument = lgb.pred.index[0]
    assert [r.getMessage() for r in caplog.records if r.name == "kronos_qlib.integration.ensemble"] == [
        f"ensemble: non-finite scores dropped before ranking: Kronos 1 (the first {day.date()} {instrument}); "
        "lightgbm_csi300 0"]
    assert ensemble.pred.index.equals(lgb.pred.index), "every row LightGBM scores, and only those"
    pd.testing.assert_frame_equal(ensemble.report, lgb.report)
    params = params_of("ensemble_w0")
    assert (params["ensemble.kronos_weight"], params["ensemble.weight_rule"]) == ("0.0", "declared")
    assert (params["ensemble.kronos_non_finite"], params["ensemble.baseline_non_finite"]) == ("1", "0")


def test_default_is_the_declared_equal_blend(store, script, capsys):
    from kronos_qlib.evaluation import load_run

    assert script.main(["--mlflow-uri", store, "--kronos", STANDIN, "--experiment", "ensemble_declared"]) == 0
    assert "Kronos weight 0.50 (declared in advance)" in capsys.readouterr().out
    params = params_of("ensemble_declared")
    assert (params["ensemble.kronos_weight"], params["ensemble.weight_rule"]) == ("0.5", "declared")
    assert not load_run("ensemble_declared").report.equals(load_run("lightgbm_csi300").report)


def test_weight_valid_chooses_by_valid_rank_ic(store, script, capsys):
    assert script.main(["--mlflow-uri", store, "--kronos", STANDIN, "--weight", "valid", "--valid-from", "2016-09-19",
                        "--experiment", "ensemble_valid"]) == 0
    assert "Kronos weight 1.00 (chosen on valid: best valid mean RankIC " in capsys.readouterr().out
    params = params_of("ensemble_valid")
    assert (params["ensemble.kronos_weight"], params["ensemble.weight_rule"]) == ("1.0", "valid")
    assert params["ensemble.chosen_on"] == "mean RankIC on 2016-09-19..2016-09-30 (valid)"
