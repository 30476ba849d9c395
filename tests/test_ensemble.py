"""The ensemble of two signals: z-scores per day, the weight chosen on valid only, runs of different dates refused."""
import numpy as np
import pandas as pd
import pytest

from kronos_qlib.errors import ConfigError
from kronos_qlib.evaluation import daily_ic
from kronos_qlib.integration.ensemble import check_same_dates, choose_weight, combine, cross_sectional_z

DAYS = pd.bdate_range("2016-01-04", periods=30)
STOCKS = [f"SH60{i:04d}" for i in range(40)]
INDEX = pd.MultiIndex.from_product([DAYS, STOCKS], names=["datetime", "instrument"])


def signals(seed: int, kronos_share: float) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Two independent signals and a label made of ``kronos_share`` of the first and the rest of the second."""
    rng = np.random.default_rng(seed)
    a, b = (pd.Series(rng.normal(size=len(INDEX)), index=INDEX) for _ in range(2))
    label = kronos_share * a + (1 - kronos_share) * b + 0.3 * pd.Series(rng.normal(size=len(INDEX)), index=INDEX)
    return 100 * a + 5, 0.01 * b, label  # scales and offsets that only z-scores undo


def test_z_scores_are_per_day_and_flat_days_get_zero():
    score = pd.Series(np.arange(len(INDEX), dtype=float), index=INDEX)
    score.loc[DAYS[0]] = 3.0
    z = cross_sectional_z(score).groupby(level="datetime")
    assert np.allclose(z.mean(), 0) and np.allclose(z.std().iloc[1:], 1)
    assert (cross_sectional_z(score).loc[DAYS[0]] == 0).all()


def test_weight_follows_the_valid_segment_and_ignores_test():
    valid = signals(0, kronos_share=0.8)
    choice = choose_weight(*valid)
    assert choice.weight >= 0.6, choice.valid_rank_ic
    assert choice.valid_rank_ic.idxmax() == choice.weight and len(choice.valid_rank_ic) == 21
    # the same valid data with any test data gives the same weight: only what is passed in is used
    flipped = signals(0, kronos_share=0.2)
    assert choose_weight(*flipped).weight <= 0.4
    assert choose_weight(*valid).weight == choice.weight
    # the chosen weight's valid RankIC is the best of the grid, recomputed independently
    best = max(daily_ic(combine(valid[0], valid[1], w), valid[2], "spearman").mean() for w in np.linspace(0, 1, 21))
    assert choice.valid_rank_ic.max() == pytest.approx(best)


def test_combine_is_the_weighted_sum_of_z_scores_on_shared_rows():
    a, b, _ = signals(1, 0.5)
    out = combine(a, b.iloc[40:], 0.25)
    assert out.index.equals(INDEX[40:])
    expected = 0.25 * cross_sectional_z(a.iloc[40:]) + 0.75 * cross_sectional_z(b.iloc[40:])
    assert np.allclose(out, expected)
    assert np.allclose(combine(a, b, 1.0), cross_sectional_z(a))
    with pytest.raises(ConfigError, match=r"weight of Kronos must lie in \[0, 1\], got 1.5"):
        combine(a, b, 1.5)


def test_runs_of_different_test_dates_are_refused_by_name():
    a, b, _ = signals(2, 0.5)
    check_same_dates(a, b, "kronos_csi300", "lightgbm_csi300")
    shifted = b.drop(DAYS[0], level="datetime")
    with pytest.raises(ConfigError, match=r"different test dates: kronos_csi300 scores 2016-01-04\.\.2016-02-12 "
                                          r"\(30 days\), lightgbm_csi300 2016-01-05.*first 2016-01-04"):
        check_same_dates(a, shifted, "kronos_csi300", "lightgbm_csi300")
    with pytest.raises(ConfigError, match="different valid dates"):
        choose_weight(a, shifted, b)


def test_residual_ic_measures_what_a_signal_adds_beyond_the_other():
    from kronos_qlib.evaluation import residual_ic

    rng = np.random.default_rng(3)
    control, own, noise = (pd.Series(rng.normal(size=len(INDEX)), index=INDEX) for _ in range(3))
    label = control + own + noise
    adds = residual_ic(control + own, control, label)  # knows something the control does not
    assert adds["residual RankIC"] > 0.3 and adds["residual RankIC t"] > 10
    echo = residual_ic(control + 0.01 * noise.sample(frac=1, random_state=0).values, control, label)
    assert abs(echo["residual RankIC"]) < 0.1 and abs(echo["residual IC"]) < 0.1  # the control's echo adds nothing
