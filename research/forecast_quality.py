"""How good are the full Kronos run's test forecasts: `scripts/evaluate_forecasts.py` on the run that
`python -m research.workflows` recorded (CPU preset, test 2020-2022, CSI300 members), its report and plots
copied into research/RESULTS.md.

    python -m research.forecast_quality [--work outputs/full_run] [--provider ../shared/cn_data]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from research.results import machine, update_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

TEST = ("2020-01-01", "2022-12-30")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(REPO / "outputs" / "full_run"))
    parser.add_argument("--provider", default=str(REPO.parent / "shared" / "cn_data"))
    args = parser.parse_args()
    work = Path(args.work).resolve()
    out = work / "forecast_quality"
    command = [sys.executable, str(REPO / "scripts" / "evaluate_forecasts.py"), "--run", "kronos_csi300",
               "--mlflow-uri", f"sqlite:///{work / 'mlruns.db'}", "--provider", str(Path(args.provider).resolve()),
               "--start", TEST[0], "--end", TEST[1], "--market", "csi300", "--out", str(out)]
    subprocess.run(command, check=True)
    for name in ("coverage", "crps", "pit"):
        shutil.copy(out / f"{name}.png", HERE / f"forecast_quality_{name}.png")
    report = (out / "table.md").read_text().strip().replace("\n#", "\n###")
    lines = ["## Forecast quality (`python -m research.forecast_quality`)", "",
             f"`scripts/evaluate_forecasts.py --run kronos_csi300 --start {TEST[0]} --end {TEST[1]} --market csi300` "
             f"on the full workflow run above: every cached test forecast of a CSI300 member scored against the "
             f"realized closes, beside random walks with the stock's own 60-day volatility (same number of paths) "
             f"and the zero-return forecast. Machine: {machine()}.", "", report, "",
             "![coverage](forecast_quality_coverage.png) ![CRPS](forecast_quality_crps.png) "
             "![PIT](forecast_quality_pit.png)"]
    update_section("forecast_quality", "\n".join(lines))


if __name__ == "__main__":
    main()
