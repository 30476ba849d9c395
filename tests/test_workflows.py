"""The qrun workflows end to end on ../shared/cn_data at a tiny scale, then scripts/compare.py on both runs.

The workflow files themselves are run, with only dates, model sizes and output folders shrunk, and the data
folder given through QLIB_DATA exactly as a user would.
"""
import math
import subprocess
import sys

import pytest
import yaml

from kronos_qlib.workflow_runner import prepare_workflow, run_qrun

from conftest import CN_DATA, REPO


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workflows")
    for name in ("kronos_csi300.yaml", "lightgbm_csi300.yaml"):
        config = prepare_workflow(name, tmp, scale="small")
        assert yaml.safe_load(config.read_text())["qlib_init"]["provider_uri"].startswith("{{ QLIB_DATA")
        run_qrun(config, cwd=tmp, qlib_data=CN_DATA, timeout=1200)
    return tmp


@pytest.mark.parametrize("experiment", ["kronos_csi300", "lightgbm_csi300"])
def test_recorded_signal_and_portfolio(recorded, experiment):
    from kronos_qlib.evaluation import init_recorder_store, load_run, summarize

    init_recorder_store(f"sqlite:///{recorded / 'mlruns.db'}")
    run = load_run(experiment)
    assert len(run.ic) >= 15 and run.ic.notna().all(), run.ic
    assert len(run.report) >= 15
    summary = summarize(run)
    for key in ("IC", "ICIR", "RankIC", "excess return (ann., with cost)", "information ratio (with cost)",
                "max drawdown (with cost)", "turnover (daily mean)"):
        assert math.isfinite(summary[key]), (key, summary)
    assert summary["turnover (daily mean)"] > 0


def test_compare_script(recorded):
    out = recorded / "compare"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "--mlflow-uri",
                             f"sqlite:///{recorded / 'mlruns.db'}", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "comparison.md").read_text()
    assert "| kronos_csi300 |" in table and "| lightgbm_csi300 |" in table and "nan" not in table.lower()
    assert (out / "cumulative_excess.png").stat().st_size > 10_000
    assert (out / "comparison.csv").exists()


def test_compare_names_a_missing_experiment(recorded):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "compare.py"), "--mlflow-uri",
                             f"sqlite:///{recorded / 'mlruns.db'}", "--experiments", "nope", "--out",
                             str(recorded / "x")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no recorded experiment 'nope'" in result.stderr
