"""KronosModel and KronosBarsHandler inside Qlib, in-process: signals, point-in-time scores, the forecast cache."""
import copy
import dataclasses
import logging
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from qlib.data.dataset import DatasetH

from kronos_qlib import CheckpointError, ConfigError, Kronos, KronosBarsHandler, KronosInputError, KronosModel
from kronos_qlib.data import init_qlib, load_bars, membership
from kronos_qlib.model.hub import file_sha256

from conftest import CN_DATA, scale_closes, small_provider

SEGMENTS = {"train": ("2016-01-01", "2016-06-30"), "valid": ("2016-07-01", "2016-09-30"),
            "test": ("2016-10-10", "2016-10-21")}


@pytest.fixture(scope="module")
def dataset():
    init_qlib(CN_DATA)
    handler = KronosBarsHandler(instruments="csi300", start_time="2016-01-01", end_time="2016-12-30", history=20)
    return DatasetH(handler=handler, segments=SEGMENTS)


def tiny_model_kwargs(out: Path) -> dict:
    """The tiny preset, trained for one short epoch per stage: fast, and enough to exercise every step."""
    return {"finetune": {"preset": "tiny", "output_dir": str(out / "checkpoints"), "device": "cpu"},
            "forecast": {"lookback": 20, "pred_len": 5}, "sampling": {"sample_count": 3}, "batch_size": 128,
            "cache_dir": str(out / "forecasts")}


@pytest.fixture(scope="module")
def fitted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("kronos-model")
    model = KronosModel(**tiny_model_kwargs(out))
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


def test_the_recorded_model_names_its_forecast_folder(fitted):
    """qrun pickles the model right after fit (params.pkl), before predict: the cache folder is known by then."""
    model, out = fitted
    recorded = pickle.loads(pickle.dumps(model))
    assert recorded.forecast_folder.parent == out / "forecasts"
    assert (recorded.forecast_folder / "key.json").exists()


class Recorder:
    """What KronosModel.fit calls on Qlib's recorder, keeping the params."""

    def __init__(self):
        self.params = {}

    def log_params(self, **params):
        self.params.update(params)

    def log_metrics(self, step, **metrics):
        pass

    def set_tags(self, **tags):
        pass


def test_the_recorded_params_name_the_weights_the_run_started_from(fitted, dataset, monkeypatch):
    """Each finetuned stage's start (the tiny preset: random weights and their seed; the predictor's tokenizer by
    its file) and the files predict uses; a fit that reuses the finished stages records them as the first did."""
    _, out = fitted
    recorder = Recorder()
    monkeypatch.setattr("kronos_qlib.integration.model.active_recorder", lambda: recorder)
    model = KronosModel(**tiny_model_kwargs(out))
    model.fit(dataset)
    params = recorder.params
    best = {stage: out / "checkpoints" / stage / "best" for stage in ("tokenizer", "predictor")}
    tokenizer_sha = file_sha256(best["tokenizer"] / "model.safetensors")
    assert (params["kronos.start.tokenizer.tokenizer.source"], params["kronos.start.tokenizer.tokenizer.seed"]) == \
        ("random", "42")
    assert params["kronos.start.predictor.predictor.source"] == "random"
    assert params["kronos.start.predictor.tokenizer.sha256"] == tokenizer_sha
    assert params["kronos.loaded.tokenizer.sha256"] == tokenizer_sha
    assert params["kronos.loaded.predictor.sha256"] == file_sha256(best["predictor"] / "model.safetensors")
    assert params["kronos.loaded.predictor.source"] == str(best["predictor"])


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
    model.signal = "vol_scaled_return"  # needs each context's observed closes, which come from the data
    try:
        scaled = model.predict(dataset, "test")
    finally:
        model.signal = "expected_return"
    assert scaled.index.equals(first.index) and np.isfinite(scaled).all() and not np.allclose(scaled, first)


def test_scores_do_not_depend_on_the_batch_size(fitted, dataset):
    model, out = fitted
    two_days = slice(pd.Timestamp("2016-10-10"), pd.Timestamp("2016-10-11"))
    scores = {}
    for batch_size in (np.int64(4), 128):
        other = KronosModel(**{**tiny_model_kwargs(out), "batch_size": batch_size, "cache_dir": None})
        other.tokenizer, other.model = model.tokenizer, model.model
        scores[int(batch_size)] = other.predict(dataset, two_days)
    pd.testing.assert_series_equal(scores[4], scores[128])


def test_a_corrupted_cache_day_is_sampled_again(fitted, dataset, caplog):
    model, _ = fitted
    folder = model.forecast_folder
    first = model.predict(dataset, "test")
    assert model.forecast_folder == folder
    day_file = model.forecast_folder / "2016-10-12.npz"
    assert (model.forecast_folder / "key.json").exists() and day_file.exists()
    day_file.write_bytes(day_file.read_bytes()[:1000])  # a truncated write
    with caplog.at_level(logging.WARNING, logger="kronos_qlib"):
        again = model.predict(dataset, "test")
    pd.testing.assert_series_equal(again, first)
    assert any(str(day_file) in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    with np.load(day_file) as data:
        assert data["paths"].shape == (len(first.xs(pd.Timestamp("2016-10-12"))), 3, 5, 6)


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


def test_smoothed_scores_do_not_see_later_days(fitted, dataset, caplog):
    """With a half-life, the score at t averages days up to t only: a segment that ends at t gives the same scores
    up to t as a longer one. predict logs how many paths the price limit and the floor changed."""
    model, _ = fitted
    model.signal_halflife = 3.0
    try:
        with caplog.at_level(logging.INFO, logger="kronos_qlib"):
            full = model.predict(dataset, "test")
        short = model.predict(dataset, slice(pd.Timestamp("2016-10-10"), pd.Timestamp("2016-10-14")))
    finally:
        model.signal_halflife = None
    plain = model.predict(dataset, "test")
    pd.testing.assert_series_equal(full.loc[:"2016-10-14"], short)
    assert not np.allclose(full.loc["2016-10-11":], plain.loc["2016-10-11":])
    assert any("had a daily move clipped at the price limit (cn)" in r.getMessage() for r in caplog.records)


def test_the_first_m_paths_of_more_are_an_m_path_sample(fitted, dataset):
    """research.signals scores m = 5, 10, 20 paths from one 40-path sample: that is exact, as each path's draws depend
    on (seed, day, instrument, path, step) only."""
    model, _ = fitted
    more = copy.copy(model)
    more.sampling = dataclasses.replace(model.sampling, sample_count=6)
    day = slice(pd.Timestamp("2016-10-10"), pd.Timestamp("2016-10-10"))
    (three,), (six,) = list(model.day_forecasts(dataset, day)), list(more.day_forecasts(dataset, day))
    assert three.instruments == six.instruments
    np.testing.assert_array_equal(six.paths[:, :3], three.paths)


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
    with pytest.raises(KronosInputError, match="unknown signal 'momentum'"):
        KronosModel(signal="momentum")
    with pytest.raises(KronosInputError, match="top_p must lie in"):
        KronosModel(sampling={"top_p": 2.0})
    with pytest.raises(ConfigError, match=r"KronosModel sampling has unknown key\(s\) \['topp'\]"):
        KronosModel(sampling={"topp": 0.9})
    with pytest.raises(ConfigError, match=r"KronosModel forecast has unknown key\(s\) \['horizon'\]"):
        KronosModel(forecast={"horizon": 5})
    with pytest.raises(KronosInputError, match="batch_size must be an integer >= 1, got 0"):
        KronosModel(batch_size=0)
    with pytest.raises(ConfigError, match="finetune.data is not used"):
        KronosModel(finetune={"data": {}})
    with pytest.raises(ConfigError, match="finetune.forecast is not used: the training windows are the model's own"):
        KronosModel(finetune={"forecast": {"lookback": 30}})
    with pytest.raises(KronosInputError, match=r"end step 11\) lies outside the forecast"):
        KronosModel(signal_end=11)
    with pytest.raises(KronosInputError, match=r"start step 10, end step 10\) lies outside the forecast"):
        KronosModel(signal_start=10)
    with pytest.raises(KronosInputError, match="'mean_over_std' needs sample_count >= 2"):
        KronosModel(signal="mean_over_std", sampling={"sample_count": 1})
    with pytest.raises(ConfigError, match="signal_halflife must be a positive number of trading days"):
        KronosModel(signal_halflife=0)
    with pytest.raises(ConfigError, match="price_limit must be 'cn'"):
        KronosModel(price_limit="us")


# ------------------------------------------------------------------------- the recorded model, updates, finetune
ROUND_TRIP = """
import pickle, sys
from qlib.data.dataset import DatasetH
from kronos_qlib import KronosBarsHandler
from kronos_qlib.data import init_qlib
init_qlib(sys.argv[1])
dataset = DatasetH(handler=KronosBarsHandler(instruments="csi300", start_time="2016-01-01", end_time="2016-12-30",
                                             history=20), segments={"test": ("2016-10-10", "2016-10-14")})
with open(sys.argv[2], "rb") as f:
    model = pickle.load(f)
model.cache_dir = None  # sample again: the same weights and settings must give the same paths
model.predict(dataset, "test").to_pickle(sys.argv[3])
"""


def test_params_pkl_predicts_the_same_in_a_fresh_process(fitted, dataset, tmp_path):
    """qrun saves the fitted model as params.pkl: weights and settings, no cache, loadable elsewhere."""
    import subprocess
    import sys

    model, _ = fitted
    params = tmp_path / "params.pkl"
    params.write_bytes(pickle.dumps(model))
    assert params.stat().st_size < 2_000_000, "the tiny pair's weights, nothing more"
    result = subprocess.run([sys.executable, "-c", ROUND_TRIP, str(CN_DATA), str(params), str(tmp_path / "s.pkl")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = model.predict(dataset, slice(pd.Timestamp("2016-10-10"), pd.Timestamp("2016-10-14")))
    pd.testing.assert_series_equal(pd.read_pickle(tmp_path / "s.pkl"), expected, rtol=1e-5)


def test_a_longer_calendar_samples_only_the_new_days(fitted, dataset, tmp_path, monkeypatch):
    """A daily job re-predicts a segment that grew by a few days: only those days are sampled."""
    import kronos_qlib.inference.predictor as predictor_module

    model = pickle.loads(pickle.dumps(fitted[0]))
    model.cache_dir = str(tmp_path / "cache")
    first = model.predict(dataset, slice(pd.Timestamp("2016-10-10"), pd.Timestamp("2016-10-17")))
    sampled = []
    real = predictor_module.KronosPredictor.predict_paths_from_arrays

    def counting(self, bars, *args, **kwargs):
        sampled.append(len(bars))
        return real(self, bars, *args, **kwargs)

    monkeypatch.setattr(predictor_module.KronosPredictor, "predict_paths_from_arrays", counting)
    longer = model.predict(dataset, slice(pd.Timestamp("2016-10-10"), pd.Timestamp("2016-10-21")))
    new_days = longer.index.get_level_values("datetime") > pd.Timestamp("2016-10-17")
    assert sum(sampled) == new_days.sum() > 0
    pd.testing.assert_series_equal(longer[~new_days], first)


def test_finetune_continues_from_the_current_weights(fitted, dataset, tmp_path):
    from kronos_qlib.model.hub import weights_digest

    model = pickle.loads(pickle.dumps(fitted[0]))
    before = {"tokenizer": weights_digest(model.tokenizer), "predictor": weights_digest(model.model)}
    scores = model.predict(dataset, "test")
    model.refit = {"output_dir": str(tmp_path / "refit"), "predictor_training": {"epochs": 1, "lr": 1e-4}}
    model.finetune(dataset)
    assert weights_digest(model.tokenizer) == before["tokenizer"], "the predictor stage only, by default"
    assert weights_digest(model.model) != before["predictor"]
    assert (tmp_path / "refit" / "predictor" / "done.json").exists()
    assert not (tmp_path / "refit" / "tokenizer").exists()
    start = Kronos.from_pretrained(tmp_path / "refit" / "start" / "predictor")
    assert weights_digest(start) == before["predictor"], "it started from the fitted weights"
    after = model.predict(dataset, "test")
    assert after.index.equals(scores.index) and not np.allclose(after, scores)
    zero_shot = KronosModel(tokenizer="unused", predictor="unused")  # no finetune settings to take a folder from
    zero_shot.tokenizer, zero_shot.model = model.tokenizer, model.model
    with pytest.raises(ConfigError, match="needs refit.output_dir"):
        zero_shot.finetune(dataset)


def test_another_precision_is_another_cache_and_fill_cache_takes_a_shard(fitted, dataset):
    model, out = fitted
    int8 = pickle.loads(pickle.dumps(model))
    int8.precision = "int8"
    assert int8._cache().folder != model._cache().folder
    int8.cache_dir = str(out / "sharded")
    sampled, cached = int8.fill_cache(dataset, "test", shard=(1, 3))
    days = sorted(p.stem for p in int8.forecast_folder.glob("*.npz"))
    from qlib.data import D
    calendar = [f"{d:%Y-%m-%d}" for d in D.calendar(start_time="2016-10-10", end_time="2016-10-21")]
    assert days == calendar[1::3] and sampled > 0 and cached == 0
    assert int8.fill_cache(dataset, "test", shard=(1, 3)) == (0, sampled)
    with pytest.raises(ConfigError, match=r"shard must be \(index, count\) with 0 <= index < count, got \(3, 3\)"):
        int8.fill_cache(dataset, "test", shard=(3, 3))


def test_forecasts_of_changed_bars_are_sampled_again(fitted, tmp_path, caplog):
    """A provider whose prices changed (one stock's closes rewritten, as after a re-adjustment) re-samples that
    stock's forecasts and says why; every other forecast is read from the cache."""
    import qlib

    provider = small_provider(tmp_path / "provider")
    model = pickle.loads(pickle.dumps(fitted[0]))
    model.cache_dir = str(tmp_path / "cache")

    def fill() -> tuple[tuple[int, int], pd.Series]:
        qlib.init(provider_uri=str(provider), region="cn")  # a new session: Qlib keeps read bars in memory
        handler = KronosBarsHandler(instruments="csi300", start_time="2016-01-01", end_time="2016-12-30", history=20)
        small = DatasetH(handler=handler, segments=SEGMENTS)
        return model.fill_cache(small, "test"), model.predict(small, "test")

    try:
        (sampled, cached), before = fill()
        assert sampled > 0 and cached == 0
        code = before.index.get_level_values("instrument")[0]
        changed = int((before.index.get_level_values("instrument") == code).sum())
        scale_closes(provider, code, 1.1)
        with caplog.at_level(logging.WARNING, logger="kronos_qlib"):
            (resampled, kept), after = fill()
    finally:
        init_qlib(CN_DATA)
    assert (resampled, kept) == (changed, sampled - changed)
    assert f"the data of 1 instrument(s) ({code}) changed since their forecasts were sampled" in caplog.text
    others = before.index.get_level_values("instrument") != code
    pd.testing.assert_series_equal(after[others], before[others])


@pytest.mark.parametrize("finetune", [None, {"preset": "small", "output_dir": "unused"}])
def test_a_test_segment_inside_the_pretraining_data_is_warned_about(dataset, tokenizer_dir, predictor_dir,
                                                                   monkeypatch, caplog, finetune):
    """Released checkpoints, used as they are or finetuned, saw data to about 2024-02: a 2016 test is inside."""
    def load_local(self, *args, **kwargs):
        self._load(tokenizer_dir, predictor_dir)

    model = KronosModel(tokenizer="NeoQuasar/Kronos-Tokenizer-base", predictor="NeoQuasar/Kronos-small",
                        finetune=finetune, cache_dir=None)
    real_load = KronosModel._load
    if finetune is None:
        monkeypatch.setattr(KronosModel, "_load", lambda self, *a: real_load(self, tokenizer_dir, predictor_dir))
    else:
        monkeypatch.setattr(KronosModel, "_train", load_local)
    with caplog.at_level(logging.WARNING, logger="kronos_qlib"):
        model.fit(dataset)
    assert ("the test segment starts 2016-10-10, inside the pretraining data of NeoQuasar/Kronos-Tokenizer-base "
            "and NeoQuasar/Kronos-small (which runs to about 2024-02)") in caplog.text
