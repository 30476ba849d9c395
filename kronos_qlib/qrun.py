"""Run the shipped workflows the way a user does: ``qrun workflows/<name>``, the file as it is, changed only
through the environment variables it reads (tests, benchmarks and notebooks go through here).

``workflows/smoke.env`` holds the variables of the smoke-test scale (tiny models, a few weeks of 2016), the
same file the README's ``env $(xargs < workflows/smoke.env) qrun ...`` command reads.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SMOKE_ENV = WORKFLOWS / "smoke.env"
#: What the factor workflow (kronos_lightgbm_csi300.yaml) changes on top of smoke.env at the smoke scale.
FACTOR_SMOKE_ENV = WORKFLOWS / "factor_smoke.env"
#: What the GRU workflow (gru_alpha360_csi300.yaml) changes on top of smoke.env at the smoke scale.
GRU_SMOKE_ENV = WORKFLOWS / "gru_smoke.env"


def smoke_env(path: Path = SMOKE_ENV) -> dict[str, str]:
    """The variables of an env file such as ``workflows/smoke.env`` (NAME=value lines)."""
    pairs = (line.split("=", 1) for line in Path(path).read_text().split() if line)
    return {name: value for name, value in pairs}


def load_workflow(workflow: str | Path, env: dict[str, str] | None = None, inherit: bool = True) -> dict:
    """The workflow as qrun reads it: the whole file rendered as a Jinja template with the environment's
    variables (and ``env``'s over them, for this rendering only; with ``inherit`` False, ``env``'s alone, as in
    a clean shell), then parsed as YAML (for scripts that build its dataset and model themselves)."""
    from qlib.cli.run import render_template
    from ruamel.yaml import YAML

    from .errors import ConfigError

    path = Path(workflow)
    if not path.is_file():
        raise ConfigError(f"workflow file {path} does not exist")
    saved = dict(os.environ)
    if not inherit:
        os.environ.clear()
    os.environ.update(env or {})
    try:
        text = render_template(str(path))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    if "{{" in text or "{%" in text:
        raise ConfigError(f"workflow file {path} still holds template syntax after rendering")
    return YAML(typ="safe", pure=True).load(text)


def qrun_command() -> list[str]:
    """The ``qrun`` console script beside this interpreter (what a user's shell finds in the environment)."""
    script = Path(sys.executable).with_name("qrun")
    return [str(script)] if script.exists() else [sys.executable, "-m", "qlib.cli.run"]


def run_qrun(workflow: str | Path, cwd: str | Path, env: dict[str, str] | None = None, timeout: float = 4 * 3600
             ) -> subprocess.CompletedProcess:
    """``qrun workflow`` in ``cwd`` (where mlruns.db, mlruns/ and runs/ land) with ``env`` added to the
    environment; output captured, as it would be in a log file. Raises with the output's tail on failure."""
    path = Path(workflow)
    if not path.is_absolute() and not path.exists():
        path = WORKFLOWS / path
    result = subprocess.run(qrun_command() + [str(path.resolve())], cwd=cwd, env={**os.environ, **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"qrun {path} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-6000:]}")
    return result
