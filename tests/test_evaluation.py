"""Signal metrics on synthetic cross-sections with known answers."""
import numpy as np
import pandas as pd
import pytest

from kronos_qlib.evaluation import daily_ic, residualize, signal_metrics


def panel(values: np.ndarray, days: int, stocks: int, name: str) -> pd.Series:
    index = pd.MultiIndex.from_product([pd.bdate_range("2021-01-04", periods=days), [f"S{i:03d}" for i in range(stocks)]],
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
