"""KronosModel and KronosBarsHandler inside Qlib, in-process: signals, point-in-time scores, the forecast cache."""
import numpy as np
import pandas as pd
import pytest
from qlib.data.dataset import DatasetH

from kronos_qlib import CheckpointError, ConfigError, KronosBarsHandler, KronosInputError, KronosModel
from kronos_qlib.data import init_qlib, load_bars, membership
from kronos_qlib.signals import SIGNALS, compute_signal

from conftest import CN_DATA
from kronos_qlib.workflow_runner import small_kronos_kwargs

SEGMENTS = {"train": ("2016-01-01", "2016-06-30"), "valid": ("2016-07-01", "2016-09-30"),
            "test": ("2016-10-10", "2016-10-21")}


@pytest.fixture(scope="module")
def dataset():
    init_qlib(CN_DATA)
    handler = KronosBarsHandler(instruments="csi300", start_time="2016-01-01", end_time="2016-12-30", history=20)
    return DatasetH(handler=handler, segments=SEGMENTS)


@pytest.fixture(scope="module")
def fitted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("kronos-model")
    model = KronosModel(**{**small_kronos_kwargs(out), "sample_count": 3, "batch_size": 128})
    model.fit(dataset)
    return model, out


def test_handler_keeps_history_before_joining_and_the_membership(dataset):
    handler = dataset.handler
    bars = handler.bars("2016-10-21")
    assert list(bars.columns) == ["open", "high", "low", "close", "volume", "amount"]
    assert bars.index.get_level_values("datetime").min() < pd.Timestamp("2016-01-01"), "history before start"
    # SH600037 joined CSI300 on 2016-06-13: membership from then, bars (as context) from before
    assert handler.universe["SH600037"] == [(pd.Timestamp("2016-06-13"), pd.Timestamp("2016-12-30"))]
    assert bars.xs("SH600037").index.min() < pd.Timestamp("2016-01-01")
    label = dataset.prepare("test", col_set="label")
    assert label.shape[1] == 1 and label.notna().any().any()


def test_predict_scores_every_member_every_day(fitted, dataset):
    model, _ = fitted
    scores = model.predict(dataset, "test")
    assert isinstance(scores, pd.Series) and scores.index.names == ["datetime", "instrument"]
    days = scores.index.get_level_values("datetime").unique()
    from qlib.data import D
    assert list(days) == list(D.calendar(start_time="2016-10-10", end_time="2016-10-21"))
    assert np.isfinite(scores).all()
    # independently: members that day, traded that day, with >= 20 traded bars up to it
    spans = membership("csi300", "2016-10-10", "2016-10-21")
    bars = load_bars(sorted(spans), "2015-06-01", "2016-10-21")
    expected = set()
    for inst, frame in bars.groupby(level="instrument"):
        traded = frame.droplevel("instrument").dropna().index
        for day in days:
            member = any(a <= day <= b for a, b in spans[inst])
            if member and day in traded and traded.get_loc(day) >= 19:
                expected.add((day, inst))
    assert set(scores.index) == expected


def test_forecasts_are_cached_and_other_signals_reuse_them(fitted, dataset, monkeypatch):
    model, _ = fitted
    first = model.predict(dataset, "test")
    import kronos_qlib.inference.predictor as predictor_module

    def no_sampling(*args, **kwargs):
        raise AssertionError("cached forecasts must not be sampled again")

    monkeypatch.setattr(predictor_module.KronosPredictor, "predict_paths_from_arrays", no_sampling)
    pd.testing.assert_series_equal(model.predict(dataset, "test"), first)
    model.signal = "prob_up"
    try:
        other = model.predict(dataset, "test")
    finally:
        model.signal = "expected_return"
    assert other.index.equals(first.index) and not np.allclose(other, first)
    assert set(other.unique()) <= {i / 3 for i in range(4)}, "prob_up of 3 paths"


def test_scores_do_not_see_the_future(fitted, dataset, monkeypatch):
    """Scrambling every bar after t leaves every score up to t unchanged."""
    model, _ = fitted
    model_cache, model.cache_dir = model.cache_dir, None
    handler = dataset.handler
    t = pd.Timestamp("2016-10-14")
    try:
        before = model.predict(dataset, "test")
        real_bars = handler.bars

        def scrambled(end):
            frame = real_bars(end).copy()
            future = frame.index.get_level_values("datetime") > t
            frame.loc[future] = frame.loc[future] * 1.7 + 3.0
            return frame

        monkeypatch.setattr(handler, "bars", scrambled)
        after = model.predict(dataset, "test")
    finally:
        model.cache_dir = model_cache
    days = before.index.get_level_values("datetime")
    pd.testing.assert_series_equal(after[days <= t], before[days <= t])
    assert not np.allclose(after[days > t], before[days > t])


def test_signals_from_paths():
    last = np.array([10.0, 20.0])
    closes = np.array([[[10.0, 11.0], [10.0, 9.0], [10.0, 13.0]],      # series 0: 3 paths, 2 steps
                       [[20.0, 21.0], [20.0, 22.0], [20.0, 19.0]]])
    paths = np.zeros((2, 3, 2, 6))
    paths[..., 3] = closes
    np.testing.assert_allclose(compute_signal("expected_return", paths, last), [0.1, 1 / 30])
    np.testing.assert_allclose(compute_signal("median_return", paths, last), [0.1, 0.05])
    np.testing.assert_allclose(compute_signal("prob_up", paths, last), [2 / 3, 2 / 3])
    np.testing.assert_allclose(compute_signal("mean_path_return", paths, last), [0.05, 1 / 60])
    ret0 = np.array([0.1, -0.1, 0.3])
    np.testing.assert_allclose(compute_signal("mean_over_std", paths, last)[0], ret0.mean() / ret0.std(), rtol=1e-6)
    np.testing.assert_allclose(compute_signal("expected_return", paths, last, horizon=1), [0.0, 0.0])
    assert set(SIGNALS) == {"expected_return", "mean_path_return", "median_return", "prob_up", "mean_over_std"}
    with pytest.raises(KronosInputError, match="unknown signal 'alpha'"):
        compute_signal("alpha", paths, last)
    with pytest.raises(KronosInputError, match="sample_count >= 2"):
        compute_signal("mean_over_std", paths[:, :1], last)


# ----------------------------------------------------------------------------------------------- bad input
def test_universe_with_no_data_in_the_segment(fitted, dataset):
    model, _ = fitted
    weekend = slice(pd.Timestamp("2016-10-01"), pd.Timestamp("2016-10-07"))  # the National Day holiday
    with pytest.raises(KronosInputError, match="has no trading days"):
        model.predict(dataset, weekend)
    init_qlib(CN_DATA)
    before_listing = DatasetH(handler=KronosBarsHandler(instruments=["SZ300999"], start_time="2016-01-04",
                                                        end_time="2016-03-31", history=20),
                              segments={"test": ("2016-03-01", "2016-03-31")})
    with pytest.raises(KronosInputError, match="the universe 'custom' has no data in segment 'test'"):
        model.predict(before_listing, "test")  # SZ300999 listed in 2020


def test_segment_shorter_than_the_lookback(fitted):
    model, _ = fitted
    init_qlib(CN_DATA)
    short = DatasetH(handler=KronosBarsHandler(instruments="csi300", start_time="2016-10-10",
                                               end_time="2016-10-21", history=0),
                     segments={"test": ("2016-10-10", "2016-10-21")})
    with pytest.raises(KronosInputError, match="no member of 'csi300' has 20 traded bars of history"):
        model.predict(short, "test")


def test_missing_provider_folder(tmp_path):
    import qlib

    qlib.init(provider_uri=str(tmp_path / "no-such-folder"), region="cn")
    try:
        with pytest.raises(ConfigError, match="Qlib provider folder '.*no-such-folder' does not exist"):
            KronosBarsHandler(instruments="csi300", start_time="2016-01-01", end_time="2016-03-31")
    finally:
        init_qlib(CN_DATA)


def test_checkpoint_folder_that_does_not_exist(dataset, tmp_path):
    model = KronosModel(tokenizer=str(tmp_path / "missing-tokenizer"), predictor=str(tmp_path / "p"))
    with pytest.raises(CheckpointError, match="checkpoint folder '.*missing-tokenizer' does not exist"):
        model.fit(dataset)


def test_bad_model_arguments():
    with pytest.raises(ConfigError, match="unknown signal 'momentum'"):
        KronosModel(signal="momentum")
    with pytest.raises(KronosInputError, match="top_p must lie in"):
        KronosModel(top_p=2.0)
    with pytest.raises(ConfigError, match="finetune.data is not used"):
        KronosModel(finetune={"data": {}})
    with pytest.raises(ConfigError, match=r"signal_horizon must lie in \[1, pred_len=10\], got 11"):
        KronosModel(signal_horizon=11)
    with pytest.raises(ConfigError, match="'mean_over_std' needs sample_count >= 2"):
        KronosModel(signal="mean_over_std", sample_count=1)
