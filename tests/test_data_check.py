"""The data check: clean on the real CSI300 folder, and each damage of a small copy reported by name."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BENCHMARK, CN_DATA, CODES, REPO, small_provider
from kronos_qlib.data.__main__ import main
from kronos_qlib.data.check import check_data
from kronos_qlib.errors import ConfigError



@pytest.fixture()
def provider(tmp_path) -> Path:
    return small_provider(tmp_path / "provider")


def cut_calendar(provider: Path, before: str) -> None:
    """Drop the calendar's days from ``before`` on (the bins still reach further)."""
    days = (provider / "calendars" / "day.txt").read_text().splitlines()
    (provider / "calendars" / "day.txt").write_text("\n".join(d for d in days if d < before) + "\n")


def one_error(report, fragment: str) -> str:
    """The report's only error, checked to contain ``fragment``."""
    assert len(report.errors) == 1, str(report)
    assert fragment in report.errors[0], str(report)
    return report.errors[0]


def test_real_folder_is_clean():
    report = check_data(CN_DATA, "csi300", "2010-01-01", "2022-12-30", backtest_end="2022-12-29", history=90)
    assert report.ok, str(report)
    assert "calendar: 2010-01-04..2022-12-30, 3159 trading days" in report.info
    assert "fields: open high low close volume factor change" in report.info
    assert any(line.startswith("market 'csi300': 706 members") for line in report.info)
    assert any(line.startswith("values checked on 100 of 706 members") for line in report.info)
    assert any("$amount is missing: amount = volume x mean(OHLC)" in line for line in report.warnings)
    assert any("only 0 trading day(s) before start 2010-01-01" in line for line in report.warnings)


def test_small_copy_is_clean_through_the_cli(provider, capsys):
    assert main(["check", "--provider", str(provider), "--start", "2015-01-05", "--end", "2022-12-30",
                 "--backtest-end", "2022-12-29"]) == 0
    out = capsys.readouterr().out
    assert "market 'csi300': 3 members between 2015-01-05 and 2022-12-30" in out
    assert "benchmark SH000300: 2010-01-04..2022-12-30" in out
    assert out.rstrip().endswith("OK, 2 warning(s)")


def test_missing_field(provider):
    for code in CODES:
        (provider / "features" / code.lower() / "close.day.bin").unlink()
    (provider / "features" / "sh600004" / "volume.day.bin").unlink()
    report = check_data(provider)
    one_error(report, "$close is missing: no member has close.day.bin")
    assert "$volume is missing for 1 of 3 members (e.g. features/sh600004/volume.day.bin)" in report.warnings


def test_percent_change(provider):
    for code in CODES:
        path = provider / "features" / code.lower() / "change.day.bin"
        raw = np.fromfile(path, dtype="<f4")
        raw[1:] *= 100
        path.unlink()
        raw.tofile(path)
    one_error(check_data(provider), "$change looks like percent, not a fraction")


def test_upper_case_feature_folders(provider):
    for code in CODES:
        (provider / "features" / code.lower()).rename(provider / "features" / code)
    one_error(check_data(provider), "3 member(s) have an upper-case feature folder (e.g. features/SH600000) "
                                    "that Qlib cannot find")


def test_calendar_shorter_than_the_segments(provider):
    cut_calendar(provider, "2022")
    report = check_data(provider, start="2020-01-01", end="2022-12-30", backtest_end="2022-12-29")
    assert report.errors == [
        "end 2022-12-30 is after the calendar's last day 2021-12-31: the calendar is shorter than the dates asked for",
        "backtest end 2022-12-29 must be at least one trading day before the calendar's last day 2021-12-31 "
        "(Qlib trades a signal at t + 1)"]


def test_backtest_ending_on_the_calendars_last_day(provider):
    one_error(check_data(provider, backtest_end="2022-12-30"), "backtest end 2022-12-30 must be at least one")


@pytest.mark.parametrize("damage, message", [
    ("repeat", "calendars/day.txt line 2001 (2018-03-27) repeats the day on line 2000 (2018-03-27)"),
    ("swap", "calendars/day.txt line 2001 (2018-03-27) comes before the day on line 2000 (2018-03-28)")])
def test_calendar_not_strictly_increasing(provider, capsys, damage, message):
    """A repeated day makes Qlib serve every later bar a trading day early; an unsorted one, wrong bars too."""
    path = provider / "calendars" / "day.txt"
    days = path.read_text().splitlines()
    if damage == "repeat":
        days.insert(2000, days[1999])
    else:
        days[1999], days[2000] = days[2000], days[1999]
    path.write_text("\n".join(days) + "\n")
    assert one_error(check_data(provider), message).endswith("the calendar must hold strictly increasing dates")
    assert main(["check", "--provider", str(provider)]) != 0
    assert message in capsys.readouterr().out


def test_no_benchmark(provider):
    shutil.rmtree(provider / "features" / BENCHMARK.lower())
    one_error(check_data(provider), "benchmark SH000300 has no close prices")
    assert check_data(provider, benchmark=None).ok


def test_unknown_market_and_bad_dates(provider, capsys):
    one_error(check_data(provider, "csi500"), "market 'csi500' has no instruments file")
    assert "(markets found: all, csi300)" in check_data(provider, "csi500").errors[0]
    with pytest.raises(ConfigError, match="start '2020-13-45' is not a date"):
        check_data(provider, start="2020-13-45")
    assert main(["check", "--provider", str(provider), "--start", "2020-13-45"]) == 2
    assert "error: start '2020-13-45' is not a date" in capsys.readouterr().err


def test_not_a_qlib_folder(tmp_path):
    (tmp_path / "calendars").mkdir()
    one_error(check_data(tmp_path), "not a Qlib data folder: it lacks instruments/, features/")


def test_errors_exit_non_zero_in_a_subprocess(provider):
    (provider / "features" / "sh600000" / "close.day.bin").unlink()
    shutil.rmtree(provider / "features" / BENCHMARK.lower())
    result = subprocess.run([sys.executable, "-m", "kronos_qlib.data", "check", "--provider", str(provider)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: benchmark SH000300 has no close prices" in result.stdout
    assert "warning: $close is missing for 1 of 3 members (e.g. features/sh600000/close.day.bin)" in result.stdout
    assert result.stdout.rstrip().endswith("1 error(s), 3 warning(s)")


def test_the_handler_stops_with_the_report(provider):
    import qlib

    from kronos_qlib import KronosBarsHandler
    from kronos_qlib.data import init_qlib

    cut_calendar(provider, "2016-06")
    qlib.init(provider_uri=str(provider), region="cn")
    try:
        with pytest.raises(ConfigError, match=r"cannot serve this run:\n- end 2016-12-30 is after the calendar's "
                                              r"last day 2016-05-31"):
            KronosBarsHandler(instruments="csi300", start_time="2016-01-04", end_time="2016-12-30")
    finally:
        init_qlib(CN_DATA)


@pytest.mark.parametrize("handler", ["KronosBarsHandler", "CheckedAlpha158"])
def test_both_workflow_handlers_check_the_benchmark_and_the_backtest_end(handler):
    """What the workflows pass their handlers (benchmark, backtest end) stops a bad run before any data loads."""
    import kronos_qlib
    from kronos_qlib.data import init_qlib

    init_qlib(CN_DATA)
    cls = getattr(kronos_qlib, handler)
    dates = dict(instruments="csi300", start_time="2022-10-01", end_time="2022-12-30")
    with pytest.raises(ConfigError, match=r"- backtest end 2022-12-30 must be at least one trading day before the "
                                          r"calendar's last day 2022-12-30"):
        cls(**dates, benchmark="SH000300", backtest_end="2022-12-30")
    with pytest.raises(ConfigError, match=r"- benchmark SH999999 has no close prices"):
        cls(**dates, benchmark="SH999999", backtest_end="2022-12-29")
