"""Choosing the sampling settings on valid: the selection rule, the day subsample, and the study research.calibration
at the smoke scale, checking that it sampled valid days only."""
from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest

from kronos_qlib.errors import ConfigError, KronosInputError
from kronos_qlib.qrun import smoke_env

from conftest import CN_DATA, study, study_env
from research.selection import METRICS, best_setting, scoring_days


def grid(*points, segment: str = "valid") -> pd.DataFrame:
    """A grid table of (T, top_p, sample_count, crps_return) points, the other metrics filled."""
    rows = [{"segment": segment, "T": T, "top_p": p, "sample_count": m, **{k: 0.5 for k in METRICS},
             "crps_return": crps} for T, p, m, crps in points]
    return pd.DataFrame(rows)


def test_the_lowest_valid_crps_over_path_counts_wins_with_the_fewest_paths():
    table = grid((0.8, 0.9, 5, 0.031), (0.8, 0.9, 20, 0.031), (1.0, 0.9, 5, 0.030), (1.0, 0.9, 20, 0.030),
                 (1.2, 1.0, 5, 0.032), (1.2, 1.0, 20, 0.0295))
    assert best_setting(table) == {"T": 1.0, "top_p": 0.9, "sample_count": 5}  # 1.2/1.0 averages 0.03075


def test_the_path_count_is_never_chosen_by_noise_and_ties_go_to_the_earlier_point():
    assert best_setting(grid((1.0, 0.9, 20, 0.029), (1.0, 0.9, 5, 0.031)))["sample_count"] == 5
    assert best_setting(grid((1.2, 1.0, 5, 0.03), (0.8, 0.9, 5, 0.03), (1.0, 1.0, 5, 0.04)))["T"] == 1.2


def test_test_rows_and_missing_scores_are_refused():
    mixed = pd.concat([grid((1.0, 0.9, 5, 0.05)), grid((0.8, 0.9, 5, 0.01), segment="test")])
    with pytest.raises(KronosInputError, match="segment.*test"):
        best_setting(mixed)
    with pytest.raises(KronosInputError, match="no crps_return"):
        best_setting(grid((1.0, 0.9, 5, 0.03), (0.8, 0.9, 5, float("nan"))))
    with pytest.raises(ConfigError, match="crps_return"):
        best_setting(grid((1.0, 0.9, 5, 0.03)).drop(columns="crps_return"))
    with pytest.raises(ConfigError, match="segment"):
        best_setting(grid((1.0, 0.9, 5, 0.03)).drop(columns="segment"))
    with pytest.raises(KronosInputError, match="no rows"):
        best_setting(grid((1.0, 0.9, 5, 0.03)).iloc[:0])


def test_scoring_days_keep_every_horizon_inside_the_segment():
    calendar = pd.bdate_range("2018-01-01", "2018-03-30")
    days = scoring_days(calendar, "2018-01-03", "2018-02-28", every_k_days=10, pred_len=5)
    inside = calendar[(calendar >= "2018-01-03") & (calendar <= "2018-02-28")]
    assert list(days) == list(inside[:-5][::10])
    assert days[0] == pd.Timestamp("2018-01-03")
    assert inside.get_loc(days[-1]) + 5 < len(inside)  # the last step still lies in the segment
    with pytest.raises(KronosInputError, match="none has 10 more"):
        scoring_days(calendar, "2018-01-03", "2018-01-10", every_k_days=1, pred_len=10)
    with pytest.raises(ConfigError, match="every_k_days"):
        scoring_days(calendar, "2018-01-03", "2018-02-28", every_k_days=0, pred_len=5)


def test_the_study_samples_only_valid_days_at_the_smoke_scale(tmp_path):
    env = study_env({**os.environ, **smoke_env()})
    results = tmp_path / "RESULTS.md"
    command = study("calibration", "--work", str(tmp_path), "--provider", str(CN_DATA), "--results", str(results),
                    "--plot", str(tmp_path / "calibration.png"), "--temperatures", "1.0", "--top-p", "0.9", "1.0",
                    "--sample-counts", "3", "--every-k-days", "30")
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    calendar = pd.DatetimeIndex(pd.read_csv(CN_DATA / "calendars" / "day.txt", header=None)[0])
    expected = scoring_days(calendar, smoke_env()["VALID_START"], smoke_env()["VALID_END"], 30, pred_len=10)
    assert len(expected) == 2
    sampled = {}
    for key in (tmp_path / "forecasts").glob("*/key.json"):
        days = sorted(pd.Timestamp(f.stem) for f in key.parent.glob("*.npz"))
        if days:
            sampling = json.loads(key.read_text())["sampling"]
            sampled[sampling["T"], sampling["top_p"], sampling["sample_count"]] = days
    assert sampled == {(1.0, 0.9, 3): list(expected), (1.0, 1.0, 3): list(expected)}

    text = results.read_text()
    assert "<!-- calibration:begin -->" in text and "Chosen on valid: **T=1, top_p=" in text
    grid_table = pd.read_csv(tmp_path / "calibration" / "grid.csv")
    assert set(grid_table["segment"]) == {"valid"} and grid_table["crps_return"].gt(0).all()
    assert best_setting(grid_table)["top_p"] == grid_table.loc[grid_table["crps_return"].idxmin(), "top_p"]
    assert (tmp_path / "calibration.png").stat().st_size > 0
