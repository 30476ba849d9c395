"""Scoring sampled paths: known answers on synthetic data, a leak test of the baselines, the script end to end."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kronos_qlib.data import init_qlib, load_bars
from kronos_qlib.errors import KronosInputError
from kronos_qlib.evaluation.baselines import past_log_returns, random_walk_paths
from kronos_qlib.evaluation.forecast_scores import (band_coverage, band_order_statistics, calibrated_coverage,
                                                    evaluate, fair_crps, pit_ranks)
from kronos_qlib.evaluation.forecasts import ForecastSet

from conftest import CN_DATA, REPO

SIGMA = 0.02


def gaussian_crps(mu: float, sigma: float, y: np.ndarray) -> np.ndarray:
    """The analytic CRPS of N(mu, sigma^2) at y."""
    z = (y - mu) / sigma
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    pdf = np.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    return sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def random_market(days: int = 160, stocks: int = 12, seed: int = 0) -> pd.DataFrame:
    """Closes of independent Gaussian random walks with daily log-return std SIGMA."""
    rng = np.random.default_rng(seed)
    log_close = np.log(10) + np.cumsum(SIGMA * rng.standard_normal((days, stocks)), axis=0)
    return pd.DataFrame(np.exp(log_close), index=pd.bdate_range("2021-01-04", periods=days),
                        columns=[f"S{i:02d}" for i in range(stocks)])


def forecasts_of(closes: pd.DataFrame, days: pd.DatetimeIndex, sample_count: int, pred_len: int,
                 sigma: float, seed: int = 1) -> ForecastSet:
    """Paths of every stock traded on each day of ``days``: random walks with daily log-return std ``sigma``."""
    dates = pd.DatetimeIndex(np.repeat(days.values, closes.shape[1]))
    instruments = np.tile(closes.columns.to_numpy(str), len(days))
    last = closes.to_numpy()[closes.index.get_indexer(dates), closes.columns.get_indexer(instruments)]
    traded = np.isfinite(last)
    dates, instruments, last = dates[traded], instruments[traded], last[traded]
    steps = sigma * np.random.default_rng(seed).standard_normal((len(dates), sample_count, pred_len))
    return ForecastSet(dates, instruments, last[:, None, None] * np.exp(np.cumsum(steps, axis=2)), last, {})


def test_bands_and_their_calibrated_coverage():
    assert band_order_statistics(5, 0.9) == (1, 5) and calibrated_coverage(5, 0.9) == pytest.approx(4 / 6)
    assert band_order_statistics(20, 0.5) == (5, 16) and calibrated_coverage(20, 0.5) == pytest.approx(11 / 21)
    assert calibrated_coverage(20, 0.9) == pytest.approx(19 / 21)
    assert calibrated_coverage(100, 0.9) == pytest.approx(91 / 101)


@pytest.mark.parametrize("sample_count", [5, 20])
def test_draws_from_the_truth_reach_the_calibrated_coverage_and_a_flat_pit(sample_count):
    rng = np.random.default_rng(0)
    samples, y = rng.standard_normal((40_000, sample_count)), rng.standard_normal(40_000)
    for level in (0.5, 0.9):
        assert band_coverage(samples, y, level).mean() == pytest.approx(calibrated_coverage(sample_count, level),
                                                                        abs=0.01)
    shares = np.bincount(pit_ranks(samples, y, rng), minlength=sample_count + 1) / len(y)
    assert np.abs(shares - 1 / (sample_count + 1)).max() < 0.01


def test_a_narrow_forecast_under_covers_and_piles_the_pit_at_the_ends():
    rng = np.random.default_rng(1)
    samples, y = 0.4 * rng.standard_normal((40_000, 20)), rng.standard_normal(40_000)
    assert band_coverage(samples, y, 0.9).mean() < calibrated_coverage(20, 0.9) - 0.3
    assert band_coverage(samples, y, 0.5).mean() < calibrated_coverage(20, 0.5) - 0.2
    shares = np.bincount(pit_ranks(samples, y, rng), minlength=21) / len(y)
    assert shares[0] > 3 / 21 and shares[-1] > 3 / 21


def test_pit_breaks_ties_at_random():
    ranks = pit_ranks(np.zeros((20_000, 3)), np.zeros(20_000), np.random.default_rng(2))
    assert np.abs(np.bincount(ranks, minlength=4) / 20_000 - 0.25).max() < 0.02


def test_crps_of_a_point_mass_is_the_absolute_error():
    y = np.array([1.0, -2.0, 0.5])
    point = np.array([[1.5], [0.0], [0.5]])
    np.testing.assert_allclose(fair_crps(point, y), [0.5, 2.0, 0.0])
    np.testing.assert_allclose(fair_crps(np.repeat(point, 7, axis=1), y), [0.5, 2.0, 0.0])


def test_fair_crps_is_unbiased_for_few_paths():
    rng = np.random.default_rng(3)
    y = np.array([-1.5, 0.0, 0.3, 2.0])
    draws = 1.0 + 2.0 * rng.standard_normal((100_000, len(y), 3))
    estimate = fair_crps(draws, np.broadcast_to(y, draws.shape[:2])).mean(axis=0)
    np.testing.assert_allclose(estimate, gaussian_crps(1.0, 2.0, y), rtol=0.01)


def test_baselines_use_no_data_after_the_forecast_day():
    closes = random_market()
    days = closes.index[[70, 100, 130]]
    forecasts = forecasts_of(closes, days, sample_count=8, pred_len=5, sigma=SIGMA)
    dates, instruments = forecasts.dates, forecasts.instruments

    def baselines(panel: pd.DataFrame) -> list[np.ndarray]:
        history = past_log_returns(panel, dates, instruments, window=60)
        return [random_walk_paths(history, forecasts.last_close, dates, instruments, 8, 5, method, seed=4)
                for method in ("random_walk", "bootstrap")]

    before = baselines(closes)
    for day in days:
        changed = closes.copy()
        after = changed.index > day
        changed.loc[after] *= np.random.default_rng(5).uniform(0.5, 2.0, (after.sum(), 12))
        changed.loc[after, "S03"] = np.nan
        mine = np.asarray(dates == day)
        for old, new in zip(before, baselines(changed)):
            np.testing.assert_array_equal(old[mine], new[mine])
    changed = closes.copy()
    changed.iloc[60:100] *= np.random.default_rng(6).uniform(0.9, 1.1, (40, 12))  # another past for day 100
    mine = np.asarray(dates == days[1])
    assert not np.allclose(baselines(changed)[0][mine], before[0][mine])


def test_each_baseline_forecast_has_its_own_seed():
    closes = random_market()
    dates = pd.DatetimeIndex([closes.index[90]] * 3)
    instruments, last = np.array(["S00", "S01", "S02"]), np.ones(3)
    history = past_log_returns(closes, dates, instruments, window=60)
    paths = random_walk_paths(history, last, dates, instruments, 6, 4, seed=7)
    alone = random_walk_paths(history[1:2], last[1:2], dates[1:2], instruments[1:2], 6, 4, seed=7)
    np.testing.assert_array_equal(paths[1:2], alone)
    assert not np.array_equal(paths, random_walk_paths(history, last, dates, instruments, 6, 4, seed=8))


def test_evaluate_scores_calibrated_paths_and_drops_what_cannot_be_scored():
    closes = random_market()
    closes.iloc[120, 0] = np.nan  # S00 suspended on day 120
    closes.iloc[140:, 1] = np.nan  # S01 delisted after day 139
    forecasts = forecasts_of(closes, closes.index[15:158], sample_count=20, pred_len=4, sigma=SIGMA)
    quality = evaluate(forecasts, closes, window=60, min_history=20)

    dropped = quality.dropped
    # the data ends on day 159: day 157 (11 stocks trade) has 2 steps left, day 156 3
    assert list(dropped["beyond_data"]) == [0, 0, 11, 22]
    # step 1: S00 from day 119, S01 from day 139; step 2: S00 from day 118, S01 from days 138 and 139
    assert list(dropped["not_traded"][:2]) == [2, 3]
    assert (dropped["short_history"] == 5 * 12).all()  # days 15..19 have fewer than 20 past returns
    assert (dropped[["beyond_data", "not_traded", "short_history", "scored"]].sum(axis=1)
            == dropped["forecasts"]).all()
    table = quality.table
    assert list(table.xs(1, level="step")["n"]) == [dropped.loc[1, "scored"]] * 4
    assert list(table.index.unique("model")) == ["kronos", "random_walk", "bootstrap", "zero_return"]
    summary = quality.summary()
    for model in ("kronos", "random_walk"):
        assert summary.loc[model, "coverage_90"] == pytest.approx(19 / 21, abs=0.03)
    assert summary.loc["random_walk", "crps_skill_vs_rw"] == 0
    assert np.isnan(summary.loc["zero_return", "coverage_50"]) and np.isnan(summary.loc["zero_return", "hit_rate"])
    assert summary.loc["zero_return", "crps_return"] == pytest.approx(summary.loc["zero_return", "median_return_mae"])
    assert summary.loc["zero_return", "crps_skill_vs_rw"] < 0

    with pytest.raises(KronosInputError, match="none of the 11 forecasts can be scored"):
        evaluate(forecasts_of(closes, closes.index[-1:], 20, 4, sigma=SIGMA), closes)
    narrow = evaluate(forecasts_of(closes, closes.index[15:158], 20, 4, sigma=SIGMA / 4), closes)
    assert narrow.summary().loc["kronos", "coverage_90"] < 0.6
    assert narrow.summary().loc["kronos", "crps_skill_vs_rw"] < 0


def test_forecasts_made_from_other_data_are_refused():
    closes = random_market()
    forecasts = forecasts_of(closes, closes.index[100:101], 4, 2, sigma=SIGMA)
    forecasts.last_close[3] *= 1.01
    with pytest.raises(KronosInputError, match=f"close of S03 on {closes.index[100].date()} .* other data"):
        evaluate(forecasts, closes)


def test_members_only_keeps_the_forecasts_of_members_on_their_day():
    closes = random_market()
    forecasts = forecasts_of(closes.iloc[:, :3], closes.index[100:104], 4, 2, sigma=SIGMA)
    day = closes.index[101]
    kept = forecasts.members_only({"S00": [(closes.index[0], closes.index[-1])], "S01": [(day, day)]}, "test")
    assert sorted(zip(kept.instruments, kept.dates)) == [("S00", d) for d in closes.index[100:104]] + [("S01", day)]
    np.testing.assert_array_equal(kept.closes[kept.instruments == "S01"], forecasts.closes[4:5])  # day 101 of S01
    with pytest.raises(KronosInputError, match="member of 'test'"):
        forecasts.members_only({"S09": [(day, day)]}, "test")


def write_cache(folder, days: list[str], instruments: list[str], pred_len: int = 3, sample_count: int = 4) -> None:
    """A forecast cache folder as KronosModel writes it, with paths spread around the real last close."""
    init_qlib(CN_DATA)
    closes = load_bars(instruments, days[0], days[-1])["close"].unstack("instrument")
    folder.mkdir(parents=True)
    (folder / "key.json").write_text(json.dumps({"provider": str(CN_DATA), "market": "csi300"}))
    rng = np.random.default_rng(0)
    for day in days:
        last = closes.loc[day, instruments].to_numpy()
        paths = last[:, None, None, None] * np.exp(0.02 * rng.standard_normal((len(last), sample_count, pred_len, 6)))
        np.savez(folder / f"{day}.npz", instruments=np.array(instruments), paths=paths.astype(np.float32),
                 last_close=last)


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate_forecasts.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_script_scores_a_cache_folder(tmp_path):
    cache = tmp_path / "cache" / "0123456789abcdef"
    write_cache(cache, ["2022-12-27", "2022-12-28", "2022-12-29"], ["SH600000", "SH600519", "SZ000001"])
    result = run_script("--cache", str(cache), "--start", "2022-12-28", "--market", "csi300",
                        "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    for name in ("table.md", "table.csv", "coverage.png", "pit.png", "crps.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    table = pd.read_csv(tmp_path / "out" / "table.csv", index_col=[0, 1])
    assert list(table.index.unique("model")) == ["kronos", "random_walk", "bootstrap", "zero_return"]
    # from the 28th on (--start); the data ends 2022-12-30: two steps left after the 28th, one after the 29th
    assert list(table.loc["kronos", "n"].drop("all")) == [6, 3]
    assert "| kronos |" in result.stdout and "beyond_data" in result.stdout


RECORD_RUN = """
import sys
from types import SimpleNamespace
from qlib.workflow import R
from kronos_qlib.evaluation import init_recorder_store

init_recorder_store(sys.argv[1])
for name, folder in [("kronos", sys.argv[2]), ("lightgbm", None)]:
    with R.start(experiment_name=name):
        R.save_objects(**{"params.pkl": SimpleNamespace(forecast_folder=folder) if folder else {"model": "lgb"}})
"""


def test_script_reads_the_cache_of_a_recorded_run(tmp_path):
    cache = tmp_path / "cache" / "0123456789abcdef"
    write_cache(cache, ["2022-12-01", "2022-12-02"], ["SH600000", "SZ000001"])
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    recorded = subprocess.run([sys.executable, "-c", RECORD_RUN, store, str(cache)], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    result = run_script("--run", "kronos", "--mlflow-uri", store, "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "table.md").read_text().startswith("## Summary")
    result = run_script("--run", "lightgbm", "--mlflow-uri", store)
    assert result.returncode == 2 and "not a KronosModel" in result.stderr


def test_script_explains_unusable_input(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("evaluate_forecasts", REPO / "scripts" / "evaluate_forecasts.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--cache", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "key.json").write_text("{}")
    assert script.main(["--cache", str(tmp_path / "empty")]) == 2
    assert "no forecast day files" in capsys.readouterr().err
    np.savez(tmp_path / "empty" / "2022-12-01.npz", instruments=np.array(["SH600000"]), paths=np.ones((1, 2, 3, 6)),
             last_close=np.ones(1))
    assert script.main(["--cache", str(tmp_path / "empty")]) == 2
    assert "names no Qlib provider" in capsys.readouterr().err
