"""README's commands are the ones CI runs: every command of its quick start appears, verbatim, in .ci/run.

Three are exempt, each for a reason .ci/run states: the full-scale main job (CI runs it at the smoke scale),
pointing QLIB_DATA at ~/.qlib (CI uses ../shared/cn_data) and the real download (no network in CI).
"""
import re

from conftest import REPO


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quick start"):text.index("\n## ", text.index("## Quick start") + 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("cd ")]


def test_ci_runs_the_readme_commands():
    commands = quick_start_commands()
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert any(c.startswith("pip install torch==") for c in commands), commands
    assert "python -m pytest -q tests" in commands
    assert "qrun workflows/kronos_csi300.yaml" in commands
    assert "env $(xargs < workflows/smoke.env) qrun workflows/kronos_csi300.yaml" in commands
    exempt = {"qrun workflows/kronos_csi300.yaml", "export QLIB_DATA=~/.qlib/qlib_data/cn_data",
              'python scripts/get_data.py --target "$QLIB_DATA"'}
    assert exempt <= set(commands)
    missing = [c for c in commands if c not in ci and c not in exempt]
    assert not missing, f"README commands that .ci/run does not run: {missing}"
