"""KronosPredictor reproduces the original's greedy forecasts, cached or not, and samples reproducibly: a
series' paths depend on its own bars and the settings, not on its batch."""
import numpy as np
import pandas as pd
import pytest
import torch

from kronos_qlib import ConfigError, ForecastSpec, KronosInputError, KronosPredictor, Sampling
from kronos_qlib.features import complete_bars, time_features
from kronos_qlib.inference import filter_logits, sample_token
from kronos_qlib.inference.sampling import path_streams, sorted_descending, usable_rows

from conftest import CONFORMANCE

COLUMNS = ["open", "high", "low", "close", "volume", "amount"]
GREEDY = dict(T=1.0, top_k=1, top_p=1.0)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return pd.read_csv(CONFORMANCE / "regression_input.csv", parse_dates=["timestamps"])


@pytest.fixture()
def kp(predictor, tokenizer):
    return KronosPredictor(predictor, tokenizer, device="cpu", max_context=512)


def window(bars, start, n_context, pred_len, columns=COLUMNS):
    x, y = bars.iloc[start:start + n_context], bars.iloc[start + n_context:start + n_context + pred_len]
    return x[columns], x["timestamps"], y["timestamps"]


def rel_err(actual, expected):
    return np.max(np.abs(actual - expected) / np.maximum(np.abs(expected), 1e-6))


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("n_context,pred_len,key", [(128, 8, "e2e_ctx128_pred8"), (256, 12, "e2e_ctx256_pred12")])
def test_greedy_matches_original(kp, bars, vectors, use_cache, n_context, pred_len, key):
    out = kp.predict(*window(bars, 0, n_context, pred_len), pred_len, use_cache=use_cache, **GREEDY)
    assert list(out.columns) == COLUMNS
    assert out.index.equals(pd.DatetimeIndex(bars["timestamps"].iloc[n_context:n_context + pred_len]))
    assert rel_err(out.to_numpy(), vectors[key]) < 1e-4


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_batch_matches_original(kp, bars, vectors, use_cache):
    """Three series, sample_count 2; the third has OHLC only, so volume and amount are filled with 0."""
    parts = [window(bars, int(s), 96, 10, COLUMNS if j < 2 else COLUMNS[:4])
             for j, s in enumerate(vectors["e2e_batch_starts"])]
    outs = kp.predict_batch(*map(list, zip(*parts)), 10, sample_count=2, use_cache=use_cache, **GREEDY)
    assert rel_err(np.stack([o.to_numpy() for o in outs]), vectors["e2e_batch_ctx96_pred10"]) < 1e-4


def sampled(kp, bars, seed, use_cache=True, n=4, **kwargs):
    parts = [window(bars, 37 * i, 90, 10) for i in range(n)]
    sampling = Sampling(**{"T": 1.0, "top_k": 0, "top_p": 0.9, "sample_count": 5, "seed": seed, **kwargs})
    return kp.predict_paths(*map(list, zip(*parts)), 10, sampling, use_cache=use_cache)


def test_seed_makes_sampling_reproducible(kp, bars):
    first, again, other = sampled(kp, bars, 7), sampled(kp, bars, 7), sampled(kp, bars, 8)
    assert first.shape == (4, 5, 10, 6)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert np.unique(first[0, :, -1, 3]).size > 1, "sample paths of one series should differ"


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_paths_do_not_depend_on_batching_or_position(predictor, tokenizer, bars, batch_size):
    parts = [window(bars, 23 * i, 90 - 5 * (i % 2), 10) for i in range(9)]  # two context lengths
    reference = KronosPredictor(predictor, tokenizer, device="cpu", batch_size=3)
    expected = reference.predict_paths(*map(list, zip(*parts)), 10, Sampling(sample_count=3, seed=11))
    kp = KronosPredictor(predictor, tokenizer, device="cpu", batch_size=batch_size)
    order = np.random.default_rng(batch_size).permutation(len(parts))
    shuffled = kp.predict_paths(*map(list, zip(*[parts[i] for i in order])), 10, Sampling(sample_count=3, seed=11))
    np.testing.assert_array_equal(shuffled, expected[order])


def test_explicit_keys_pick_the_draws(kp, bars):
    x = bars[COLUMNS].to_numpy()[:90].reshape(3, 30, 6)
    stamps = time_features(bars["timestamps"][:90]).reshape(3, 30, 5)
    y_stamp = np.repeat(time_features(bars["timestamps"][90:95])[None], 3, axis=0)
    sampling = Sampling(sample_count=4, seed=0)
    paths = kp.predict_paths_from_arrays(x, stamps, y_stamp, sampling, keys=np.array([5, 6, 7]))
    again = kp.predict_paths_from_arrays(x[::-1], stamps[::-1], y_stamp, sampling, keys=np.array([7, 6, 5]))
    np.testing.assert_array_equal(again[::-1], paths)
    other = kp.predict_paths_from_arrays(x, stamps, y_stamp, sampling, keys=np.array([8, 6, 7]))
    assert not np.allclose(other[0], paths[0])
    np.testing.assert_array_equal(other[1:], paths[1:])
    with pytest.raises(KronosInputError, match="keys must be 3 integers >= 0"):
        kp.predict_paths_from_arrays(x, stamps, y_stamp, sampling, keys=np.array([1, -2, 3]))


def test_inverse_cdf_draws_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(40_000, 4)
    streams = path_streams(torch.arange(40_000), 1)
    tokens = sample_token(logits, Sampling(T=1.0, top_p=1.0), streams, draw=3)[:, 0]
    np.testing.assert_allclose(torch.bincount(tokens, minlength=4) / 40_000, probs, atol=0.01)
    other_draw = sample_token(logits, Sampling(T=1.0, top_p=1.0), streams, draw=4)[:, 0]
    assert (tokens == other_draw).float().mean() < 0.5, "draws of one stream must be independent"
    nucleus = sample_token(logits, Sampling(T=1.0, top_p=0.6), streams, draw=3)[:, 0]
    assert set(nucleus.tolist()) == {0, 1}


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_decode_loop_runs_no_input_checks(kp, bars, monkeypatch, use_cache):
    """Each check syncs a GPU with the host: the sampler checks its inputs once, the networks' steps never."""
    import kronos_qlib.model.predictor as network

    calls = []
    for name in ("check_token_ids", "check_stamp"):
        monkeypatch.setattr(network, name, lambda *args, _name=name: calls.append(_name))
    sampled(kp, bars, 0, use_cache=use_cache, n=2)
    assert calls == []


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("damage", [float("nan"), float("inf")])
def test_a_non_finite_distribution_never_becomes_a_token(kp, predictor, bars, use_cache, damage):
    """Damaged weights (loaded before the hub refused them, or overflowing) make NaN logits, which inverse-CDF
    sampling would turn into the last token: the sampler refuses them instead."""
    with torch.no_grad():
        predictor.head.proj_s2.bias[7] = damage
    with pytest.raises(KronosInputError, match=r"non-finite next-token distribution \(NaN or inf logits\) for "
                                               r"series 0 of the batch, path 0, at step 1"):
        sampled(kp, bars, 0, use_cache=use_cache, n=2)


def test_a_forecast_that_overflows_names_the_series_and_column(kp, bars):
    """A volume near the float limit overflows the normalization's std and comes back as -inf."""
    parts = [window(bars, 0, 60, 5), window(bars, 70, 60, 5)]
    parts[1][0].loc[parts[1][0].index[10], "volume"] = 1e300
    with pytest.raises(KronosInputError, match=r"the forecast of series 1 holds a non-finite value \(-inf\) in "
                                               r"column 'volume' at step 1 of path 0"):
        kp.predict_paths(*map(list, zip(*parts)), 5, Sampling(sample_count=2, seed=1))


def test_usable_rows():
    logits = torch.tensor([[0.0, 1.0], [float("-inf"), 2.0], [float("nan"), 1.0], [float("inf"), 0.0],
                           [float("-inf"), float("-inf")]])
    assert usable_rows(logits).tolist() == [True, True, False, False, False]


def test_cache_and_recompute_draw_the_same_paths(kp, bars):
    """Same seed, same random draws: the cached sampler computes the same distribution at every step."""
    np.testing.assert_allclose(sampled(kp, bars, 3), sampled(kp, bars, 3, use_cache=False), rtol=1e-4)


def test_top_k_and_top_p_combined(kp, bars):
    np.testing.assert_allclose(sampled(kp, bars, 5, top_k=20, top_p=0.8),
                               sampled(kp, bars, 5, use_cache=False, top_k=20, top_p=0.8), rtol=1e-4)


@pytest.mark.parametrize("n_context", [60, 100])
def test_long_context_keeps_the_last_max_context_tokens(predictor, tokenizer, bars, n_context):
    """With a window that slides (context + horizon > max_context) the cached path equals recomputation."""
    kp = KronosPredictor(predictor, tokenizer, device="cpu", max_context=64)
    args = window(bars, 11, n_context, 12)
    cached = kp.predict(*args, 12, use_cache=True, **GREEDY)
    full = kp.predict(*args, 12, use_cache=False, **GREEDY)
    assert rel_err(cached.to_numpy(), full.to_numpy()) < 1e-4
    assert rel_err(kp.predict(*args, 12, seed=1, use_cache=True).to_numpy(),
                   kp.predict(*args, 12, seed=1, use_cache=False).to_numpy()) < 1e-4


def test_histories_of_different_lengths(kp, bars):
    parts = [window(bars, 0, 50, 6), window(bars, 300, 120, 6), window(bars, 700, 50, 6)]
    together = kp.predict_batch(*map(list, zip(*parts)), 6, **GREEDY)
    for part, out in zip(parts, together):
        pd.testing.assert_frame_equal(out, kp.predict(*part, 6, **GREEDY), rtol=1e-5)


def test_mean_of_paths_is_the_forecast(kp, bars):
    part = window(bars, 0, 90, 10)
    paths = kp.predict_paths([part[0]], [part[1]], [part[2]], 10, Sampling(T=1.0, top_p=0.9, sample_count=4, seed=2))
    forecast = kp.predict(*part, 10, sample_count=4, seed=2)  # the original's defaults: T 1.0, top_p 0.9
    np.testing.assert_allclose(paths[0].mean(axis=0), forecast.to_numpy())


def test_filter_keeps_top_k_then_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_k=3, top_p=0.6))
    # top-3 renormalizes to (0.59, 0.24, 0.18): 0.59 < 0.6 so the crossing token 0.24 is kept too
    assert kept.tolist() == [[True, True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.45)).tolist() == [[True, False, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=4)).sum() == 4


def sorted_prefix_nucleus(logits, top_p):
    """The nucleus by its definition: sort, and keep the first token and each whose predecessors' mass is at
    most top_p."""
    ordered, order = torch.sort(logits, descending=True, dim=-1)
    before = ordered.softmax(dim=-1).cumsum(dim=-1)
    keep = torch.ones_like(logits, dtype=torch.bool)
    keep[..., 1:] = before[..., :-1] <= top_p
    return torch.zeros_like(keep).scatter(-1, order, keep)


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("scale", [0.01, 1.0, 8.0])
def test_nucleus_threshold_keeps_the_sorted_prefix(top_p, scale):
    """The threshold nucleus (no sort order, no scatter) keeps exactly the tokens the sort-based definition keeps,
    with and without a top k before it, on float32 and float64 logits alike."""
    generator = torch.Generator().manual_seed(int(scale * 100) + int(top_p * 1000))
    for dtype in (torch.float32, torch.float64):
        logits = (torch.randn(64, 1024, generator=generator) * scale).to(dtype)
        assert torch.equal(torch.isfinite(filter_logits(logits, top_p=top_p)), sorted_prefix_nucleus(logits, top_p))
        top_k = filter_logits(logits, top_k=100)
        assert torch.equal(torch.isfinite(filter_logits(logits, top_k=100, top_p=top_p)),
                           sorted_prefix_nucleus(top_k, top_p))


def test_nucleus_keeps_every_token_tied_with_its_last():
    """Which of equal logits a sort puts first must not decide what can be drawn: all three ties are kept."""
    logits = torch.tensor([[0.0, 1.0, 1.0, 1.0, -1.0]])
    assert torch.isfinite(filter_logits(logits, top_p=0.3)).tolist() == [[False, True, True, True, False]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sorted_descending_is_torchs_sort(dtype):
    values = torch.randn(8, 300).to(dtype)
    values[0, :5] = float("-inf")
    assert torch.equal(sorted_descending(values), torch.sort(values, dim=-1, descending=True).values)


@pytest.mark.parametrize("unit", ["ns", "us", "s"])
@pytest.mark.parametrize("tz", [None, "Asia/Shanghai", "America/New_York"])
def test_time_features_are_pandas_calendar_fields(unit, tz):
    """The arithmetic behind time_features gives pandas' own fields (minute, hour, weekday, day, month of the wall
    clock), before 1970 and across daylight saving too."""
    rng = np.random.default_rng(0)
    ns = np.sort(rng.integers(-2 * 10**9, 4 * 10**9, 5000)) * 10**9 + rng.integers(0, 10**9, 5000)
    ts = pd.DatetimeIndex(ns.astype("datetime64[ns]")).as_unit(unit)
    ts = ts if tz is None else ts.tz_localize("UTC").tz_convert(tz)
    expected = np.stack([ts.minute, ts.hour, ts.day_of_week, ts.day, ts.month], axis=-1)
    np.testing.assert_array_equal(time_features(ts), expected.astype(np.float32))


def test_fill_rules_for_volume_and_amount(bars):
    ohlc = bars[["open", "high", "low", "close"]].iloc[:5]
    no_volume = complete_bars(ohlc)
    assert (no_volume[["volume", "amount"]] == 0).all().all()
    with_volume = complete_bars(bars[["open", "high", "low", "close", "volume"]].iloc[:5])
    np.testing.assert_allclose(with_volume["amount"], bars["volume"].iloc[:5] * ohlc.mean(axis=1))


# ------------------------------------------------------------------------------------------------ bad input
def test_nan_price_names_column_and_row(kp, bars):
    df, x_ts, y_ts = window(bars, 0, 30, 5)
    df = df.copy()
    df.loc[12, "high"] = np.nan
    with pytest.raises(KronosInputError, match=r"column 'high' at row 12"):
        kp.predict(df, x_ts, y_ts, 5)
    df.loc[12, "high"] = np.inf
    with pytest.raises(KronosInputError, match="non-finite value \\(inf\\)"):
        kp.predict(df, x_ts, y_ts, 5)


def test_non_numeric_price_names_column_and_row(kp, bars):
    df, x_ts, y_ts = window(bars, 0, 30, 5)
    df = df.astype({"high": object})
    df.loc[12, "high"] = "abc"
    with pytest.raises(KronosInputError, match=r"non-numeric value 'abc' in column 'high' at row 12"):
        kp.predict(df, x_ts, y_ts, 5)


def test_array_input_is_checked(kp, bars):
    x = bars[COLUMNS].to_numpy()[:60].reshape(2, 30, 6).copy()
    stamps = time_features(bars["timestamps"][:60]).reshape(2, 30, 5)
    y_stamp = np.repeat(time_features(bars["timestamps"][60:65])[None], 2, axis=0)
    sampling = Sampling(sample_count=2)
    assert kp.predict_paths_from_arrays(x, stamps, y_stamp, sampling).shape == (2, 2, 5, 6)
    x[1, 7, 4] = np.nan
    with pytest.raises(KronosInputError, match="bars of series 1 has a non-finite value .* 'volume' at position 7"):
        kp.predict_paths_from_arrays(x, stamps, y_stamp, sampling)
    with pytest.raises(KronosInputError, match="time features must be"):
        kp.predict_paths_from_arrays(x, stamps[:, :20], y_stamp, sampling)
    stamps[0, 3, 4] = 13
    with pytest.raises(KronosInputError, match=r"'month' must lie in \[0, 13\)"):
        kp.predict_paths_from_arrays(x[:1], stamps[:1], y_stamp[:1], sampling)


def test_too_few_context_bars(kp, bars):
    df, x_ts, y_ts = window(bars, 0, 1, 5)
    with pytest.raises(KronosInputError, match="1 context bar"):
        kp.predict(df, x_ts, y_ts, 5)


def test_y_timestamp_length_must_equal_pred_len(kp, bars):
    df, x_ts, y_ts = window(bars, 0, 30, 5)
    with pytest.raises(KronosInputError, match="y_timestamp of series 0 has 5 entries but pred_len is 6"):
        kp.predict(df, x_ts, y_ts, 6)


def test_timestamps_must_be_datetimes(kp, bars):
    df, x_ts, y_ts = window(bars, 0, 30, 5)
    with pytest.raises(KronosInputError, match="x_timestamp of series 0 must hold datetimes"):
        kp.predict(df, x_ts.astype(str), y_ts, 5)
    with pytest.raises(KronosInputError, match="y_timestamp of series 0 must hold datetimes"):
        kp.predict(df, x_ts, np.arange(5), 5)


def test_time_zones_of_x_and_y(kp, bars):
    """The same instants give the same forecast whatever zone y is written in (time features read the history's
    wall clock); a tz-aware x with a naive y (or the reverse) is refused, naming which is which."""
    df, x_ts, y_ts = window(bars, 0, 60, 5)
    x_sh, y_sh = (pd.DatetimeIndex(ts).tz_localize("Asia/Shanghai") for ts in (x_ts, y_ts))
    sampling = Sampling(sample_count=2, seed=4)
    same = kp.predict_paths([df], [x_sh], [y_sh], 5, sampling)
    np.testing.assert_array_equal(kp.predict_paths([df], [x_sh], [y_sh.tz_convert("UTC")], 5, sampling), same)
    with pytest.raises(KronosInputError, match=r"x_timestamp of series 0 is timezone-aware \(Asia/Shanghai\) but "
                                               r"y_timestamp is naive"):
        kp.predict(df, x_sh, y_ts, 5)
    with pytest.raises(KronosInputError, match="y_timestamp of series 0 is timezone-aware .* but x_timestamp is naive"):
        kp.predict(df, x_ts, y_sh, 5)


@pytest.mark.parametrize("which,position", [("unsorted", 4), ("reversed", 1), ("duplicate", 9)])
def test_x_timestamps_must_increase(kp, bars, which, position):
    df, x_ts, y_ts = window(bars, 0, 30, 5)
    x_ts = x_ts.to_numpy().copy()
    if which == "unsorted":
        x_ts[[3, 4]] = x_ts[[4, 3]]
    elif which == "reversed":
        x_ts = x_ts[::-1]
    else:
        x_ts[9] = x_ts[8]
    with pytest.raises(KronosInputError, match=f"x_timestamp of series 0 must be strictly increasing: position "
                                               f"{position} "):
        kp.predict(df, x_ts, y_ts, 5)


def test_forecast_timestamps_must_follow_the_history(kp, bars):
    df, x_ts, y_ts = window(bars, 0, 30, 5)
    with pytest.raises(KronosInputError, match=r"y_timestamp of series 0 must come after the history: position 0"):
        kp.predict(df, x_ts, x_ts[-5:], 5)
    repeated = y_ts.to_numpy().copy()
    repeated[2] = repeated[1]
    with pytest.raises(KronosInputError, match="y_timestamp of series 0 must be strictly increasing: position 2"):
        kp.predict(df, x_ts, repeated, 5)


def test_numpy_integers_work_like_ints(predictor, tokenizer, bars):
    args = window(bars, 0, 30, 5)
    kp = KronosPredictor(predictor, tokenizer, device="cpu", batch_size=np.int64(2))
    numpy_ints = kp.predict(*args, np.int64(5), top_k=np.int32(0), sample_count=np.int64(2), seed=np.uint8(3))
    pd.testing.assert_frame_equal(numpy_ints, kp.predict(*args, 5, top_k=0, sample_count=2, seed=3))
    assert type(ForecastSpec(lookback=np.int16(30)).lookback) is int


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True])
def test_impossible_batch_size(predictor, tokenizer, batch_size):
    with pytest.raises(KronosInputError, match=f"batch_size must be an integer >= 1, got {batch_size!r}"):
        KronosPredictor(predictor, tokenizer, device="cpu", batch_size=batch_size)


@pytest.mark.parametrize("cls,kwargs,message", [
    (ForecastSpec, {"lookback": 1}, "lookback must be an integer >= 2, got 1"),
    (ForecastSpec, {"pred_len": 0}, "pred_len must be an integer >= 1"),
    (ForecastSpec, {"pred_len": True}, "pred_len must be an integer >= 1, got True"),
    (ForecastSpec, {"clip": 0}, "clip must be > 0"),
    (ForecastSpec, {"clip": "5"}, "clip must be a number"),
    (ForecastSpec, {"pred_len": 20, "max_context": 16}, r"pred_len \(20\) cannot exceed max_context \(16\)"),
    (Sampling, {"seed": -1}, "seed must be an integer >= 0"),
    (Sampling, {"sample_count": 2.5}, "sample_count must be an integer >= 1"),
])
def test_settings_are_checked_where_they_are_built(cls, kwargs, message):
    with pytest.raises(KronosInputError, match=message):
        cls(**kwargs)


def test_settings_from_a_config_mapping():
    assert Sampling.build({"T": 0.5, "seed": np.int64(4)}, "sampling") == Sampling(T=0.5, seed=4)
    assert ForecastSpec.build(None, "forecast") == ForecastSpec()
    assert Sampling.build({"seed": 1}, "sampling").to_dict() == dict(T=1.2, top_k=0, top_p=1.0, sample_count=5,
                                                                     seed=1)
    with pytest.raises(ConfigError, match=r"forecast has unknown key\(s\) \['horizon'\]"):
        ForecastSpec.build({"horizon": 5}, "forecast")
    with pytest.raises(ConfigError, match="sampling must be a mapping"):
        Sampling.build([1.0], "sampling")


def test_missing_price_column(kp, bars):
    df, x_ts, y_ts = window(bars, 0, 30, 5)
    with pytest.raises(KronosInputError, match=r"no column\(s\) \['close'\]"):
        kp.predict(df.drop(columns="close"), x_ts, y_ts, 5)


@pytest.mark.parametrize("kwargs,message", [
    ({"T": 0.0}, "T \\(temperature\\) must be > 0"),
    ({"T": -1.0}, "T \\(temperature\\) must be > 0"),
    ({"top_p": 0.0}, "top_p must lie in \\(0, 1\\]"),
    ({"top_p": 1.5}, "top_p must lie in \\(0, 1\\]"),
    ({"sample_count": 0}, "sample_count must be an integer >= 1"),
    ({"top_k": -2}, "top_k must be an integer >= 0"),
])
def test_bad_sampling_arguments(kp, bars, kwargs, message):
    with pytest.raises(KronosInputError, match=message):
        kp.predict(*window(bars, 0, 30, 5), 5, **kwargs)


def test_pred_len_beyond_max_context(predictor, tokenizer, bars):
    kp = KronosPredictor(predictor, tokenizer, device="cpu", max_context=4)
    with pytest.raises(KronosInputError, match="pred_len \\(5\\) cannot exceed max_context \\(4\\)"):
        kp.predict(*window(bars, 0, 30, 5), 5)


def test_paths_of_different_series_never_share_a_stream():
    """600,000 (series, path) streams, as many as one CSI300 year of 5-path forecasts: all distinct (32-bit ids
    would give about 40 colliding pairs, whose paths would repeat each other's every draw)."""
    streams = path_streams(torch.arange(120_000, dtype=torch.int64) * 7_919 + 12_345, 5)
    assert torch.unique(streams, dim=0).shape[0] == len(streams) == 600_000
