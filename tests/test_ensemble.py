"""The ensemble of two signals: daily rank-gauss scores on LightGBM's rows, non-finite scores dropped and logged,
a weight declared in advance or chosen on valid only, runs of different dates refused."""
import importlib.util
import logging

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from kronos_qlib.errors import ConfigError
from kronos_qlib.evaluation import daily_ic
from kronos_qlib.integration.ensemble import check_same_dates, choose_weight, combine, rank_gauss

from conftest import REPO

DAYS = pd.bdate_range("2016-01-04", periods=30)
STOCKS = [f"SH60{i:04d}" for i in range(40)]
INDEX = pd.MultiIndex.from_product([DAYS, STOCKS], names=["datetime", "instrument"])


def signals(seed: int, kronos_share: float) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Two independent signals and a label made of ``kronos_share`` of the first and the rest of the second."""
    rng = np.random.default_rng(seed)
    a, b = (pd.Series(rng.normal(size=len(INDEX)), index=INDEX) for _ in range(2))
    label = kronos_share * a + (1 - kronos_share) * b + 0.3 * pd.Series(rng.normal(size=len(INDEX)), index=INDEX)
    return 100 * a + 5, 0.01 * b, label  # scales and offsets that only a per-day transform undoes


def daily_order(score: pd.Series) -> pd.Series:
    """Each day's instruments from the highest score down, ties in instrument order: what a top-k strategy buys."""
    return score.groupby(level="datetime").apply(
        lambda day: tuple(day.droplevel("datetime").sort_index().sort_values(ascending=False, kind="stable").index))


def test_rank_gauss_of_a_known_day_with_ties_and_a_flat_day():
    index = pd.MultiIndex.from_product([DAYS[:2], ["A", "B", "C", "D"]], names=["datetime", "instrument"])
    score = pd.Series([10.0, -3.0, 10.0, 1e9, 7.0, 7.0, 7.0, 7.0], index=index)
    # day 1: ranks 2.5, 1, 2.5, 4 of n = 4 -> quantiles 0.5, 0.125, 0.5, 0.875; day 2 all tied -> 0.5
    expected = norm.ppf([0.5, 0.125, 0.5, 0.875, 0.5, 0.5, 0.5, 0.5])
    assert np.allclose(rank_gauss(score), expected) and expected[1] == pytest.approx(-1.1503494, abs=1e-6)
    assert (rank_gauss(score).loc[DAYS[1]] == 0).all()


def test_a_non_finite_kronos_score_is_dropped_counted_and_logged_without_zeroing_its_day(caplog):
    kronos, lgb, _ = signals(4, 0.5)
    bad = kronos.copy()
    bad.loc[(DAYS[3], STOCKS[7])] = np.inf
    bad.loc[(DAYS[5], STOCKS[2])] = np.nan
    with caplog.at_level(logging.WARNING, logger="kronos_qlib.integration.ensemble"):
        combination = combine(bad, lgb)
    assert combination.non_finite == {"kronos": 2, "baseline": 0}
    lines = [r.getMessage() for r in caplog.records if r.name == "kronos_qlib.integration.ensemble"]
    assert lines == ["ensemble: non-finite scores dropped before ranking: Kronos 2 (the first 2016-01-07 SH600007); "
                     "baseline 0"]
    out = combination.score(0.5)
    # the same as if Kronos had never scored those two rows: the rest of the day keeps its Kronos part ...
    missing = combine(kronos.drop([(DAYS[3], STOCKS[7]), (DAYS[5], STOCKS[2])]), lgb).score(0.5)
    assert out.index.equals(INDEX) and np.allclose(out, missing)
    day = out.loc[DAYS[3]]
    assert not np.allclose(day, rank_gauss(lgb).loc[DAYS[3]])
    # ... and the dropped stock keeps LightGBM's part, its Kronos part neutral
    assert out.loc[(DAYS[3], STOCKS[7])] == 0.5 * rank_gauss(lgb).loc[(DAYS[3], STOCKS[7])]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kronos_qlib.integration.ensemble"):
        assert combine(kronos, lgb).non_finite == {"kronos": 0, "baseline": 0}
    assert not caplog.records


def test_combine_is_the_weighted_rank_gauss_on_lightgbm_rows():
    a, b, _ = signals(1, 0.5)
    extra = pd.Series(1.0, index=pd.MultiIndex.from_product([DAYS, ["SZ000001"]], names=["datetime", "instrument"]))
    kronos = pd.concat([a.iloc[40:], extra])  # no Kronos score on the first day; a stock LightGBM does not score
    out = combine(kronos, b).score(0.25)
    assert out.index.equals(INDEX), "LightGBM's rows, all of them, and no other"
    assert np.allclose(out.iloc[40:], 0.25 * rank_gauss(a.iloc[40:]) + 0.75 * rank_gauss(b.iloc[40:]))
    assert np.array_equal(out.iloc[:40], 0.75 * rank_gauss(b).iloc[:40]), "LightGBM-only rows: Kronos's part 0"
    assert np.allclose(combine(a, b).score(1.0), rank_gauss(a))
    with pytest.raises(ConfigError, match=r"weight of Kronos must lie in \[0, 1\], got 1.5"):
        combine(a, b).score(1.5)


def test_weight_zero_ranks_every_day_as_lightgbm_alone():
    a, b, _ = signals(5, 0.5)
    b = b.round(3)  # ties, as a few shallow trees give
    kronos = a.sample(frac=0.7, random_state=0)  # Kronos misses 30% of the rows
    kronos.iloc[:3] = [np.inf, -np.inf, np.nan]
    out = combine(kronos, b).score(0.0)
    assert out.index.equals(INDEX) and np.array_equal(out, rank_gauss(b))
    assert daily_order(out).equals(daily_order(b))


def test_weight_follows_the_valid_segment_and_ignores_test():
    valid = signals(0, kronos_share=0.8)
    choice = choose_weight(*valid)
    assert choice.weight >= 0.6, choice.valid_rank_ic
    assert choice.valid_rank_ic.idxmax() == choice.weight and len(choice.valid_rank_ic) == 21
    # the same valid data with any test data gives the same weight: only what is passed in is used
    flipped = signals(0, kronos_share=0.2)
    assert choose_weight(*flipped).weight <= 0.4
    assert choose_weight(*valid).weight == choice.weight
    # the chosen weight's valid RankIC is the best of the grid, recomputed independently on the days whose label
    # lies inside valid
    best = max(daily_ic(combine(valid[0], valid[1]).score(w), valid[2].loc[DAYS[:-2]], "spearman").mean()
               for w in np.linspace(0, 1, 21))
    assert choice.valid_rank_ic.max() == pytest.approx(best)
    # the last valid days, whose label (close t + 1 to t + 2) lies in test, are not read
    label = valid[2].copy()
    late = label.index.get_level_values("datetime") >= DAYS[-2]
    label[late] = valid[0][late] * 100.0
    assert choose_weight(valid[0], valid[1], label).valid_rank_ic.equals(choice.valid_rank_ic)
    # equal valid RankICs: the smaller weight
    assert choose_weight(valid[1], valid[1], valid[2]).weight == 0.0


def test_runs_of_different_test_dates_are_refused_by_name():
    a, b, _ = signals(2, 0.5)
    check_same_dates(a, b, "kronos_csi300", "lightgbm_csi300")
    shifted = b.drop(DAYS[0], level="datetime")
    with pytest.raises(ConfigError, match=r"different test dates: kronos_csi300 scores 2016-01-04\.\.2016-02-12 "
                                          r"\(30 days\), lightgbm_csi300 2016-01-05.*first 2016-01-04"):
        check_same_dates(a, shifted, "kronos_csi300", "lightgbm_csi300")
    with pytest.raises(ConfigError, match="different valid dates"):
        choose_weight(a, shifted, b)


def test_partial_ic_measures_what_a_signal_adds_beyond_the_other():
    from kronos_qlib.evaluation import partial_ic

    rng = np.random.default_rng(3)
    control, own, noise = (pd.Series(rng.normal(size=len(INDEX)), index=INDEX) for _ in range(3))
    label = control + own + noise
    adds = partial_ic(control + own, control, label)  # knows something the control does not
    assert adds["partial RankIC"] > 0.3 and adds["partial RankIC t"] > 10
    echo = partial_ic(control + 0.01 * noise.sample(frac=1, random_state=0).values, control, label)
    assert abs(echo["partial RankIC"]) < 0.1 and abs(echo["partial IC"]) < 0.1  # the control's echo adds nothing


@pytest.mark.parametrize("weight", ["1.5", "-0.1", "nan", "half"])
def test_script_refuses_a_weight_outside_0_1_before_reading_any_run(weight, capsys):
    spec = importlib.util.spec_from_file_location("ensemble_script", REPO / "scripts" / "ensemble.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--mlflow-uri", "sqlite:////nonexistent/mlruns.db", "--weight", weight]) == 2
    assert f"error: --weight must be 'valid' or a number in [0, 1], got '{weight}'" in capsys.readouterr().err
