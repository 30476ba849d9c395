"""Signal metrics and their statistics on synthetic cross-sections and series with known answers."""
import numpy as np
import pandas as pd
import pytest

from kronos_qlib.errors import KronosInputError
from kronos_qlib.evaluation import (daily_ic, group_returns, mean_over_seeds, mean_t, newey_west_se,
                                    paired_difference, partial_ic, residualize, signal_metrics, topk_excess)


def panel(values: np.ndarray, days: int, stocks: int, name: str) -> pd.Series:
    names = [f"S{i:03d}" for i in range(stocks)]
    index = pd.MultiIndex.from_product([pd.bdate_range("2021-01-04", periods=days), names],
                                       names=["datetime", "instrument"])
    return pd.Series(values.ravel(), index=index, name=name)


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    days, stocks = 60, 200
    control = rng.normal(size=(days, stocks))
    own = rng.normal(size=(days, stocks))
    label = 0.3 * control + 0.2 * own + rng.normal(size=(days, stocks))
    return {name: panel(v, days, stocks, name) for name, v in
            dict(control=control, own=own, label=label, mixed=control + own).items()}


def test_ic_and_long_short_of_an_informative_score(data):
    metrics = signal_metrics(data["mixed"], data["label"])
    assert 0.25 < metrics["IC"] < 0.45 and metrics["ICIR"] > 2
    assert metrics["long-short spread (daily)"] > 0 and metrics["long-short t"] > 10
    noise = signal_metrics(data["own"].sample(frac=1, random_state=1).set_axis(data["own"].index), data["label"])
    assert abs(noise["IC"]) < 0.05 and abs(noise["long-short t"]) < 4


def test_residual_ic_removes_what_the_control_explains(data):
    """mixed = control + own: after removing control, what is left ranks like `own` alone."""
    residual = residualize(data["mixed"], data["control"])
    assert daily_ic(residual, data["own"]).min() > 0.98
    assert daily_ic(residual, data["control"]).abs().max() < 1e-9, "nothing of the control is left"
    np.testing.assert_allclose(residualize(data["control"], data["control"]), 0.0, atol=1e-9)
    partial = daily_ic(residual, data["label"]).mean()
    assert 0.1 < partial < daily_ic(data["mixed"], data["label"]).mean()


def test_partial_ic_residualizes_score_and_label():
    """The label = control + own + noise: the partial IC of `own` given the control is its correlation with the
    part of the label the control leaves, higher than the semi-partial IC of the residual with the raw label."""
    rng = np.random.default_rng(4)
    days, stocks = 40, 300
    control, own = rng.normal(size=(days, stocks)), rng.normal(size=(days, stocks))
    label = 2.0 * control + own + rng.normal(size=(days, stocks))
    series = {n: panel(v, days, stocks, n) for n, v in dict(control=control, own=own, label=label).items()}
    out = partial_ic(series["own"], series["control"], series["label"])
    assert out["partial IC"] == pytest.approx(1 / np.sqrt(2), abs=0.03)
    semi = daily_ic(residualize(series["own"], series["control"]), series["label"]).mean()
    assert out["partial IC"] > semi + 0.2 and out["partial IC t"] > 20 and out["partial RankIC"] > 0.6


def test_newey_west_matches_the_iid_formula_at_lag_0_and_widens_for_autocorrelated_days():
    rng = np.random.default_rng(5)
    x = pd.Series(rng.normal(0.1, 1.0, 2000))
    np.testing.assert_allclose(newey_west_se(x, lag=0), x.std(ddof=0) / np.sqrt(len(x)))
    # an AR(1) series with phi 0.6: its long-run variance is (1 + phi) / (1 - phi) = 4 times the iid one
    e = rng.normal(size=20000)
    ar = np.zeros_like(e)
    for i in range(1, len(e)):
        ar[i] = 0.6 * ar[i - 1] + e[i]
    ratio = newey_west_se(ar, lag=20) / newey_west_se(ar, lag=0)
    assert 1.7 < ratio < 2.1, ratio
    assert abs(mean_t(pd.Series(ar))["t"]) < abs(ar.mean() / (ar.std() / np.sqrt(len(ar))))
    for short in ([], [1.0], x):  # a bad lag is refused whatever the series, not only when it is long enough
        with pytest.raises(KronosInputError, match="lag must be >= 0"):
            newey_west_se(short, lag=-1)


def test_paired_difference_uses_common_days_and_seed_means():
    days = pd.bdate_range("2021-01-04", periods=300)
    rng = np.random.default_rng(6)
    common = pd.Series(rng.normal(0, 0.01, len(days)), index=days)  # the period's shared sampling error
    a = [common + 0.001 + pd.Series(rng.normal(0, 0.001, len(days)), index=days) for _ in range(3)]
    b = [common + pd.Series(rng.normal(0, 0.001, len(days)), index=days) for _ in range(3)]
    paired = paired_difference(mean_over_seeds(a), mean_over_seeds(b).iloc[10:])
    assert paired["days"] == 290 and paired["mean"] == pytest.approx(0.001, abs=2e-4) and paired["t"] > 10
    # the unpaired view of the same runs: the shared sampling error swamps the gap
    assert mean_t(mean_over_seeds(a))["t"] < 3
    # a day one seed lacks (a constant score's NaN IC) leaves the seed mean rather than being averaged over fewer seeds
    a[1].iloc[5] = np.nan
    assert days[5] not in mean_over_seeds(a).index and len(mean_over_seeds(a)) == 299


def test_quantile_buckets_break_ties_at_random_not_by_instrument_order():
    """prob_up of 5 paths takes 6 values: with first-come ranks the tied stocks fill buckets in code order, so a
    label that rises with the code number leaks into the spread of a score that knows nothing."""
    rng = np.random.default_rng(7)
    days, stocks = 50, 200
    score = panel(np.zeros((days, stocks)), days, stocks, "score")  # all tied
    label = panel(np.tile(np.linspace(-0.01, 0.01, stocks), (days, 1)) + rng.normal(0, 1e-4, (days, stocks)),
                  days, stocks, "label")
    spread = group_returns(score, label)
    assert abs((spread[5] - spread[1]).mean()) < 0.002, "a tied score has no spread"


def test_topk_excess_and_turnover():
    days, stocks = 5, 10
    values = np.tile(np.arange(stocks, dtype=float), (days, 1))
    score = panel(values, days, stocks, "score")
    label = panel(values / 100, days, stocks, "label")
    out = topk_excess(score, label, k=3)
    np.testing.assert_allclose(out["excess"], (8 - 4.5) / 100)
    np.testing.assert_allclose(out["turnover"], [1.0, 0, 0, 0, 0])


def test_the_imports_of_earlier_releases_still_work():
    """kronos_qlib.forecast_quality moved into kronos_qlib.evaluation."""
    from kronos_qlib import evaluation
    from kronos_qlib.forecast_quality import ForecastSet, evaluate, write_report

    assert evaluate is evaluation.forecast_scores.evaluate and ForecastSet is evaluation.forecasts.ForecastSet
    assert write_report is evaluation.forecast_reports.write_report
