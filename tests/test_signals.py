"""Signals from sampled paths: their windows (start and end steps), the new signals, and bad windows."""
import numpy as np
import pandas as pd
import pytest

from kronos_qlib import KronosInputError
from kronos_qlib.signals import SIGNALS, compute_signal
from kronos_qlib.signals.paths import MARKET_FREE_LIMIT

LAST = np.array([10.0, 20.0])
# two series, three paths, two steps: closes after the last observed one
CLOSES = np.array([[[10.0, 11.0], [10.0, 9.0], [10.0, 13.0]],
                   [[20.0, 21.0], [20.0, 22.0], [20.0, 19.0]]])


def paths_of(closes: np.ndarray) -> np.ndarray:
    paths = np.ones((*closes.shape, 6))
    paths[..., 3] = closes
    return paths


PATHS = paths_of(CLOSES)


def test_from_the_last_observed_close():
    """start=0 scores the whole forecast from the last close (the move from t to t + 1 included)."""
    window = dict(start=0)
    np.testing.assert_allclose(compute_signal("expected_return", PATHS, LAST, **window), [0.1, 1 / 30])
    np.testing.assert_allclose(compute_signal("median_return", PATHS, LAST, **window), [0.1, 0.05])
    np.testing.assert_allclose(compute_signal("prob_up", PATHS, LAST, **window), [2 / 3, 2 / 3])
    np.testing.assert_allclose(compute_signal("mean_path_return", PATHS, LAST, **window), [0.05, 1 / 60])
    ret0 = np.array([0.1, -0.1, 0.3])
    np.testing.assert_allclose(compute_signal("mean_over_std", PATHS, LAST, **window)[0], ret0.mean() / ret0.std(),
                               rtol=1e-6)
    np.testing.assert_allclose(compute_signal("expected_return", PATHS, LAST, start=0, end=1), [0.0, 0.0])


def test_default_window_is_tradable():
    """The default starts at step 1, the first close a trade at t + 1 can get: the t -> t + 1 move is left out."""
    closes = np.array([[[12.0, 12.0], [12.0, 12.0]]])  # a jump on the untradable day, flat afterwards
    assert compute_signal("expected_return", paths_of(closes), np.array([10.0]))[0] == 0.0
    assert compute_signal("expected_return", paths_of(closes), np.array([10.0]), start=0)[0] == pytest.approx(0.2)
    np.testing.assert_allclose(compute_signal("expected_return", PATHS, LAST),
                               [np.mean([1.1, 0.9, 1.3]) - 1, np.mean([1.05, 1.1, 0.95]) - 1])


def test_vol_scaled_return_divides_by_the_stocks_own_volatility():
    rng = np.random.default_rng(0)
    quiet = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 31)))
    wild = quiet[0] * np.exp(np.cumsum(rng.normal(0, 0.04, 31)))
    history = np.stack([quiet, wild])
    closes = np.stack([np.full((2, 3), quiet[-1] * 1.02), np.full((2, 3), wild[-1] * 1.02)])
    closes[:, :, 0] = history[:, -1:]  # step 1 equals the last close, then +2%
    scores = compute_signal("vol_scaled_return", paths_of(closes), history[:, -1], start=1, end=3, history=history)
    expected_vol = np.diff(np.log(history[:, -21:]), axis=1).std(axis=1) * np.sqrt(2)
    np.testing.assert_allclose(scores, 0.02 / expected_vol, rtol=1e-6)
    assert scores[0] > 3 * scores[1], "the same forecast return ranks the quiet stock higher"
    flat = np.full((1, 31), 50.0)  # locked at its limit: no volatility at all
    path = np.broadcast_to(np.array([50.0, 50.5, 51.0]), (1, 2, 3))
    locked = compute_signal("vol_scaled_return", paths_of(path), flat[:, -1], history=flat)
    np.testing.assert_allclose(locked, 0.02 / (0.005 * np.sqrt(2)), rtol=1e-9)  # the volatility floor, not 0
    with pytest.raises(KronosInputError, match="'vol_scaled_return' needs the observed closes"):
        compute_signal("vol_scaled_return", paths_of(closes), history[:, -1])


def test_forecast_closes_at_or_below_zero_are_floored():
    """De-normalized paths can go to zero or below: a floor at 1% of the last close keeps scores finite."""
    closes = CLOSES.copy()
    closes[0, 1] = [-3.0, 0.0]  # one wild path of series 0
    for name in SIGNALS:
        if name != "vol_scaled_return":
            assert np.isfinite(compute_signal(name, paths_of(closes), LAST, start=0)).all(), name
    floored = compute_signal("expected_return", paths_of(closes), LAST, start=0)
    # the floored close counts as the largest fall the market-free bound allows (no limit is given)
    np.testing.assert_allclose(floored[0], np.mean([0.1, (1 - MARKET_FREE_LIMIT) - 1, 0.3]))


def test_downside_and_risk_signals():
    rng = np.random.default_rng(1)
    calm = 10 * np.exp(np.cumsum(rng.normal(0, 0.005, (1, 20, 10)), axis=2))
    stormy = 10 * np.exp(np.cumsum(rng.normal(0, 0.05, (1, 20, 10)), axis=2))
    paths = paths_of(np.concatenate([calm, stormy]))
    risk = compute_signal("low_forecast_risk", paths, np.array([10.0, 10.0]))
    assert risk[0] > risk[1], "the calm paths rank higher on low forecast risk"
    returns = np.concatenate([calm, stormy])[:, :, -1] / np.concatenate([calm, stormy])[:, :, 0] - 1
    np.testing.assert_allclose(compute_signal("downside_return", paths, np.array([10.0, 10.0])),
                               np.quantile(returns, 0.2, axis=1))
    with pytest.raises(KronosInputError, match="'low_forecast_risk' needs a window of at least 2 steps"):
        compute_signal("low_forecast_risk", paths, np.array([10.0, 10.0]), start=1, end=2)


@pytest.mark.parametrize("window,message", [
    (dict(start=1, end=3), r"signal window \(start step 1, end step 3\) lies outside the forecast"),
    (dict(start=2), r"start step 2, end step 2"),
    (dict(start=-1), r"start step -1"),
    (dict(start=1.5), "signal_start must be an integer step"),
])
def test_signal_window_outside_the_forecast(window, message):
    with pytest.raises(KronosInputError, match=message):
        compute_signal("expected_return", PATHS, LAST, **window)


def test_unknown_signals_and_too_few_paths():
    assert {"expected_return", "mean_path_return", "median_return", "prob_up", "mean_over_std", "vol_scaled_return",
            "downside_return", "low_forecast_risk"} == set(SIGNALS)
    with pytest.raises(KronosInputError, match="unknown signal 'alpha'"):
        compute_signal("alpha", PATHS, LAST)
    with pytest.raises(KronosInputError, match="sample_count >= 2"):
        compute_signal("mean_over_std", PATHS[:, :1], LAST)
    with pytest.raises(KronosInputError, match="last observed closes must be positive"):
        compute_signal("expected_return", PATHS, np.array([10.0, 0.0]))


# ------------------------------------------------------------------------------------ wild paths, price limits
def sane_and_wild(n_stocks: int = 30, seed: int = 0):
    """A day of ``n_stocks`` stocks with five sane paths each (+-3% a day, main-board codes) and, for stock 0, a
    copy whose first path is floored at step 1 and recovers by step 10 (the +9,900% "return" of a wild path)."""
    rng = np.random.default_rng(seed)
    last = rng.uniform(5, 50, n_stocks)
    closes = last[:, None, None] * np.exp(np.cumsum(rng.normal(0, 0.02, (n_stocks, 5, 10)), axis=2))
    wild = closes.copy()
    wild[0, 0, 0] = 0.0  # floored to 1% of the last close at step 1
    wild[0, 0, 1:] = last[0]  # back to the last close from step 2 on
    names = [f"SH60{i:04d}" for i in range(n_stocks)]
    return last, closes, wild, names


def test_one_wild_path_counts_no_more_than_limit_moves_the_market_allows():
    from kronos_qlib.signals import price_limits, score_day

    last, closes, wild, names = sane_and_wild()
    limits = price_limits(names, "cn")
    unclipped = compute_signal("expected_return", paths_of(wild), last)
    assert unclipped[0] < 2, "without a market limit the market-free bound holds the floored-and-recovered path"
    clipped = compute_signal("expected_return", paths_of(wild), last, limit=limits)
    # the same path as the market allows it: -10% at step 1, +10% at step 2, flat after: an unclipped sane path
    # (scored from step 1, the floored close, which the unclipped score divides by)
    sane = wild.copy()
    sane[0, 0] = last[0] * np.array([0.9] + [0.99] * 9)
    for signal in ("expected_return", "median_return", "mean_path_return", "low_forecast_risk"):
        np.testing.assert_allclose(compute_signal(signal, paths_of(wild), last, limit=limits),
                                   compute_signal(signal, paths_of(sane), last), err_msg=signal)
    # its rank moves no more than replacing that path by the most extreme path the limits allow (+10% a day)
    extreme = closes.copy()
    extreme[0, 0] = last[0] * np.cumprod([1.1] * 10)

    def above(values: np.ndarray) -> int:  # stocks ranked above stock 0
        return int((values > values[0]).sum())

    base = compute_signal("expected_return", paths_of(closes), last, limit=limits)
    bound = compute_signal("expected_return", paths_of(extreme), last, limit=limits)
    assert abs(above(clipped) - above(base)) <= abs(above(bound) - above(base))
    values, window = score_day("expected_return", paths_of(wild), last, 1, None, None, limits)
    assert window.floored == 1 and window.clipped == 1 and np.isfinite(values).all()


def test_sane_paths_are_not_changed_by_the_limit():
    last, closes, _, names = sane_and_wild()
    from kronos_qlib.signals import price_limits

    for name in SIGNALS:
        if name == "vol_scaled_return":
            continue
        np.testing.assert_allclose(compute_signal(name, paths_of(closes), last, limit=price_limits(names, "cn")),
                                   compute_signal(name, paths_of(closes), last), err_msg=name)


def test_price_limits_by_board_and_setting():
    from kronos_qlib.errors import ConfigError
    from kronos_qlib.signals import price_limits

    np.testing.assert_allclose(price_limits(["SH600000", "SZ000001", "SZ300750", "SH688981", "sz301001", "SH689009",
                                             "BJ430047"], "cn"), [0.1, 0.1, 0.2, 0.2, 0.2, 0.2, 0.3])
    np.testing.assert_allclose(price_limits(["AAPL", "MSFT"], 0.15), [0.15, 0.15])
    assert price_limits(["AAPL"], None) is None
    with pytest.raises(ConfigError, match="instrument 'AAPL' is not an SH/SZ/BJ code"):
        price_limits(["SH600000", "AAPL"], "cn")
    for bad in (0.0, 1.5, "us", True):
        with pytest.raises(ConfigError, match="price_limit must be"):
            price_limits(["AAPL"], bad)


def test_nothing_non_finite_leaves_a_signal():
    last, closes, wild, _ = sane_and_wild()
    flat = closes.copy()
    flat[1] = last[1]  # five identical paths: no spread across them
    for name in SIGNALS:
        if name != "vol_scaled_return":
            assert np.isfinite(compute_signal(name, paths_of(flat), last, limit=0.1)).all(), name
    broken = closes.copy()
    broken[3, 2, 4] = np.nan
    with pytest.raises(KronosInputError, match=r"series \[3\] hold non-finite closes"):
        compute_signal("expected_return", paths_of(broken), last)


def test_winsorize_caps_the_tails_and_keeps_the_order_inside():
    from kronos_qlib.signals import winsorize

    values = np.concatenate([np.linspace(-1, 1, 198), [50.0, -40.0]])
    out = winsorize(values)
    assert out.max() < 1.01 and out.min() > -1.01
    inside = (values > np.quantile(values, 0.01)) & (values < np.quantile(values, 0.99))
    np.testing.assert_array_equal(out[inside], values[inside])


def test_smoothing_uses_no_later_day():
    """The smoothed score at day t is the same whether or not days after t are scored (no look-ahead)."""
    from kronos_qlib.signals import smooth_scores

    rng = np.random.default_rng(3)
    index = pd.MultiIndex.from_product([pd.bdate_range("2021-01-04", periods=30), ["A", "B", "C"]],
                                       names=["datetime", "instrument"])
    scores = pd.Series(rng.normal(size=len(index)), index=index)
    full = smooth_scores(scores, 5.0)
    early = smooth_scores(scores.loc[:"2021-01-29"], 5.0)
    pd.testing.assert_series_equal(full.loc[:"2021-01-29"], early)
    assert not np.allclose(full, scores) and smooth_scores(scores, None) is scores
    first = scores.xs("A", level="instrument")
    np.testing.assert_allclose(full.xs("A", level="instrument").iloc[1],
                               (first.iloc[0] * 0.5 ** (1 / 5) + first.iloc[1]) / (0.5 ** (1 / 5) + 1))


def test_without_a_price_limit_one_floored_path_that_recovers_stays_bounded():
    """No limit given: a path the sampler sent to the close floor at step 1 and back must not rank its stock
    first by a 'return' of about 20; each move is held to the market-free bound instead."""

    closes = np.full((2, 5, 10), 10.0)
    closes[0, 0, 0] = 0.05  # floored at step 1 (the floor is 1% of the last close) ...
    closes[0, 0, 1:] = 10.0 * 1.02 ** np.arange(1, 10)  # ... then recovers above where it started
    paths = np.zeros((2, 5, 10, 6))
    paths[..., 3] = closes
    for name in ("expected_return", "mean_path_return"):
        values = compute_signal(name, paths, np.array([10.0, 10.0]))
        assert np.all(np.abs(values) < (1 + MARKET_FREE_LIMIT) ** 10), (name, values)
        assert values[0] < 2.0, (name, values)
