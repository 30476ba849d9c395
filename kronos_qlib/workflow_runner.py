"""Run the shipped qrun workflows, as they are or shrunk to a smoke-test scale (CI, notebooks without runs).

The "small" scale keeps each workflow's structure (handler, model, records, strategy) and shrinks only the
dates (2016, a four-week test), the Kronos networks and the training budget.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"

TINY_TOKENIZER = dict(d_in=6, d_model=32, n_heads=2, ff_dim=64, n_enc_layers=2, n_dec_layers=2, ffn_dropout_p=0.0,
                      attn_dropout_p=0.0, resid_dropout_p=0.0, s1_bits=4, s2_bits=4, beta=0.05, gamma0=1.0,
                      gamma=1.1, zeta=0.05, group_size=4)
TINY_PREDICTOR = dict(s1_bits=4, s2_bits=4, n_layers=2, d_model=32, n_heads=2, ff_dim=64, ffn_dropout_p=0.1,
                      attn_dropout_p=0.0, resid_dropout_p=0.1, token_dropout_p=0.0, learn_te=True)

SMALL_DATES = {"start_time": "2016-01-01", "end_time": "2016-12-30"}
SMALL_SEGMENTS = {"train": ["2016-01-01", "2016-06-30"], "valid": ["2016-07-01", "2016-09-30"],
                  "test": ["2016-10-10", "2016-11-04"]}
SMALL_BACKTEST = {"start_time": "2016-10-10", "end_time": "2016-11-03"}


class _TemplateDumper(yaml.SafeDumper):
    """Keeps Jinja templates double-quoted: qrun renders the raw text, where YAML's '' escapes break Jinja."""


_TemplateDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style='"' if "{{" in value else None))


def small_kronos_kwargs(out_dir: Path) -> dict:
    stage = dict(epochs=1, batch_size=16, lr=1e-3, max_train_windows=256, max_valid_windows=64)
    return {
        "finetune": {"output_dir": str(out_dir / "checkpoints"), "device": "cpu", "pre_trained_tokenizer": False,
                     "pre_trained_predictor": False, "tokenizer_config": TINY_TOKENIZER,
                     "predictor_config": TINY_PREDICTOR, "tokenizer_training": stage, "predictor_training": stage},
        "lookback": 20, "pred_len": 5, "sample_count": 2, "cache_dir": str(out_dir / "forecasts"),
    }


def prepare_workflow(name: str, out_dir: str | Path, scale: str = "small", mlflow_uri: str | None = None,
                     model_kwargs: dict | None = None) -> Path:
    """Write ``workflows/<name>`` into ``out_dir`` at ``scale`` ("small" or "full"), recording to ``mlflow_uri``
    (default: ``out_dir/mlruns.db``), with ``model_kwargs`` updating the model's. The data folder stays a
    QLIB_DATA template for qrun to fill."""
    if scale not in ("small", "full"):
        raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["qlib_init"]["exp_manager"]["kwargs"]["uri"] = mlflow_uri or f"sqlite:///{out_dir / 'mlruns.db'}"
    task = workflow["task"]
    if scale == "small":
        handler = task["dataset"]["kwargs"]["handler"]["kwargs"]
        handler.update(SMALL_DATES)
        if "fit_end_time" in handler:
            handler.update(fit_start_time=SMALL_SEGMENTS["train"][0], fit_end_time=SMALL_SEGMENTS["train"][1])
        task["dataset"]["kwargs"]["segments"] = SMALL_SEGMENTS
        for record in task["record"]:
            if record["class"] == "PortAnaRecord":
                record["kwargs"]["config"]["backtest"].update(SMALL_BACKTEST)
        if task["model"]["class"] == "KronosModel":
            task["model"]["kwargs"].update(small_kronos_kwargs(out_dir))
    task["model"]["kwargs"].update(model_kwargs or {})
    path = out_dir / name
    path.write_text(yaml.dump(workflow, Dumper=_TemplateDumper, sort_keys=False, width=10**6))
    return path


def run_qrun(config: str | Path, cwd: str | Path, qlib_data: str | Path | None = None, timeout: int = 4 * 3600
             ) -> subprocess.CompletedProcess:
    """``qrun config`` in ``cwd`` (where qrun puts mlruns/), with QLIB_DATA set; raises with the output's tail."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if qlib_data is not None:
        env["QLIB_DATA"] = str(qlib_data)
    result = subprocess.run([sys.executable, "-m", "qlib.cli.run", str(config)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"qrun {config} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-6000:]}")
    return result
