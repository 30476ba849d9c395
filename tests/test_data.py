"""The Qlib data pipeline on the real CSI300 data: no leaks, point-in-time membership, clean split boundaries."""
import numpy as np
import pandas as pd
import pytest
import qlib

from kronos_qlib import ConfigError, ForecastSpec, KronosInputError
from kronos_qlib.data import (BarPanel, DataConfig, WindowDataset, build_datasets, init_qlib, load_bars, membership,
                              window_starts)

from conftest import CN_DATA, scale_closes, small_provider

SPEC = ForecastSpec(lookback=30, pred_len=5)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    init_qlib(CN_DATA)
    return load_bars(["SH600000", "SH600004", "SZ000001", "SZ002252"], "2017-01-01", "2019-12-31")


def test_bars_have_six_columns_and_derived_amount(frame):
    assert list(frame.columns) == ["open", "high", "low", "close", "volume", "amount"]
    row = frame.dropna().iloc[0]
    assert row["amount"] == pytest.approx(row["volume"] * row[["open", "high", "low", "close"]].mean())


def test_suspended_bars_are_dropped(frame):
    panel = BarPanel.from_frame(frame)
    assert frame.isna().any(axis=1).any(), "the sample should contain suspended days"
    assert len(panel.values) == len(frame.dropna())
    assert np.isfinite(panel.values).all()


def windows_by_key(frame: pd.DataFrame) -> dict:
    """(instrument, first date) -> (inputs, time features, raw bars, last date) of every window."""
    panel = BarPanel.from_frame(frame)
    ds = WindowDataset(panel, window_starts(panel, SPEC, "2017-01-01", "2019-12-31"), SPEC)
    out = {}
    for i in range(len(ds)):
        inst, first, last = ds.describe(i)
        x, stamp = ds[i]
        out[(inst, first)] = (x.numpy(), stamp.numpy(), panel.values[ds.rows(i)], last)
    return out


def test_changing_the_future_changes_nothing_before_it(frame):
    t = pd.Timestamp("2018-06-29")
    future = frame.index.get_level_values("datetime") > t
    changed = frame.copy()
    rng = np.random.default_rng(0)
    changed.loc[future] = changed.loc[future] * rng.uniform(0.5, 2.0, size=(future.sum(), 1)) + 7.0
    changed.loc[future & (rng.uniform(size=len(changed)) < 0.2)] = np.nan  # new suspensions after t too
    before, after = windows_by_key(frame), windows_by_key(changed)

    ending_by_t = [k for k, v in before.items() if v[3] <= t]
    assert len(ending_by_t) > 500
    for key in ending_by_t:  # a window that ends by t: the same inputs and time features
        np.testing.assert_array_equal(after[key][0], before[key][0])
        np.testing.assert_array_equal(after[key][1], before[key][1])

    # a window whose context ends at t: the same context, and targets normalized with the same statistics
    decided_at_t = [k for k in before if k in after and context_end(frame, k) == t]
    assert len(decided_at_t) == 3, "one window per instrument traded at t (SZ002252 is suspended)"
    for key in decided_at_t:
        x_old, (x_new, _, raw_new, _) = before[key][0], after[key]
        np.testing.assert_array_equal(x_new[:SPEC.lookback], x_old[:SPEC.lookback])
        context = before[key][2][:SPEC.lookback]
        expected = np.clip((raw_new[SPEC.lookback:] - context.mean(0)) / (context.std(0) + 1e-5), -5, 5)
        np.testing.assert_allclose(x_new[SPEC.lookback:], expected.astype(np.float32), rtol=1e-6, atol=1e-6)
        assert not np.allclose(x_new[SPEC.lookback:], x_old[SPEC.lookback:]), "the targets did change"


def context_end(frame: pd.DataFrame, key: tuple) -> pd.Timestamp:
    """Date of the last context bar of the window (instrument, first date)."""
    traded = frame.xs(key[0]).dropna().index
    return traded[traded.get_loc(key[1]) + SPEC.lookback - 1]


def test_a_split_fingerprint_reads_only_the_bars_its_windows_draw_from(frame):
    """A finished training stage is keyed by its windows' fingerprint: bars after the split (a later test end)
    leave it alone, a changed bar inside one window changes it."""
    def fingerprint(bars: pd.DataFrame) -> str:
        panel = BarPanel.from_frame(bars)
        return WindowDataset(panel, window_starts(panel, SPEC, "2017-01-01", "2018-06-29"), SPEC).fingerprint()

    dates = frame.index.get_level_values("datetime")
    base = fingerprint(frame[dates <= pd.Timestamp("2018-06-29")])
    assert fingerprint(frame) == base
    changed = frame.copy()
    changed.loc[("SH600000", pd.Timestamp("2018-03-01")), "close"] *= 1.01
    assert fingerprint(changed) != base


def test_membership_is_point_in_time():
    """A window is a training window when its stock is a member on its last context day t, as inference scores
    the members of t: it may not be chosen for joining during its horizon, nor dropped for leaving during it."""
    init_qlib(CN_DATA)
    spans = membership("csi300", "2010-01-01", "2020-12-31")
    assert [(a.date().isoformat(), b.date().isoformat()) for a, b in spans["SH600004"]] == [
        ("2010-01-04", "2011-12-12"), ("2018-12-17", "2020-12-31")]
    panel = BarPanel.from_frame(load_bars(["SH600004"], "2010-01-01", "2020-12-31"))
    ds = WindowDataset(panel, window_starts(panel, SPEC, "2010-01-01", "2020-12-31", spans), SPEC)
    rows = [ds.rows(i) for i in range(len(ds))]
    firsts = pd.DatetimeIndex([panel.dates[r.start] for r in rows])
    ts = pd.DatetimeIndex([panel.dates[r.start + SPEC.lookback - 1] for r in rows])
    lasts = pd.DatetimeIndex([panel.dates[r.stop - 1] for r in rows])
    traded = pd.DatetimeIndex(panel.dates)
    out = (traded > "2011-12-12") & (traded < "2018-12-17")  # out of the index in between
    assert not ((ts > "2011-12-12") & (ts < "2018-12-17")).any(), "no window's t while out of the index"
    # every traded day t of a membership with a whole window around it is a window's t, however the horizon ends
    members = traded[~out & (np.arange(len(traded)) >= SPEC.lookback - 1)
                     & (np.arange(len(traded)) < len(traded) - SPEC.pred_len)]
    assert set(ts) == set(members)
    # it left on 2011-12-12: its last windows as a member run into the days after it left
    assert (lasts[ts <= "2011-12-12"] > "2011-12-12").sum() == SPEC.pred_len
    # it rejoined on 2018-12-17: history from before serves as context, no window's t lies before it
    assert (firsts < "2018-12-17")[ts >= "2018-12-17"].any() and not ((ts < "2018-12-17") & (lasts >= "2018-12-17")
                                                                        & (ts > "2011-12-12")).any()
    everything = window_starts(panel, SPEC, "2010-01-01", "2020-12-31")
    assert len(everything) > len(ds), "without membership the gap years would count"


def test_split_boundaries(frame):
    panel = BarPanel.from_frame(frame)
    splits = {"train": ("2017-01-01", "2017-12-31"), "valid": ("2018-01-01", "2018-12-31"),
              "test": ("2019-01-01", "2019-12-31")}
    for name, (start, end) in splits.items():
        ds = WindowDataset(panel, window_starts(panel, SPEC, start, end), SPEC)
        assert len(ds) > 0
        for i in range(len(ds)):
            rows = ds.rows(i)
            dates = panel.dates[rows]
            targets = dates[SPEC.lookback:]
            assert targets.min() >= np.datetime64(start) and targets.max() <= np.datetime64(end), name
        if name != "train":  # context may reach back into the previous split
            assert min(panel.dates[ds.rows(i).start] for i in range(len(ds))) < np.datetime64(start)


#: the windows of the tiny_data tests
TINY = ForecastSpec(lookback=20, pred_len=5)


def tiny_data(tmp_path, **overrides) -> DataConfig:
    values = dict(provider_uri=str(CN_DATA), market="csi300", train=("2016-01-01", "2016-03-31"),
                  valid=("2016-04-01", "2016-04-30"), test=("2016-05-01", "2016-05-31"),
                  cache_dir=str(tmp_path / "cache"))
    values.update(overrides)
    return DataConfig(**values)


def test_processed_data_is_cached(tmp_path, monkeypatch):
    config = tiny_data(tmp_path)
    first = build_datasets(config, TINY)
    assert len(list((tmp_path / "cache").glob("windows-*.npz"))) == 1
    import kronos_qlib.data.pipeline as pipeline

    def fail(*args, **kwargs):
        raise AssertionError("the second run must not reload bars from Qlib")

    monkeypatch.setattr(pipeline, "load_bars", fail)
    second = build_datasets(config, TINY)
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(first[split].starts, second[split].starts)
        np.testing.assert_array_equal(first[split][0][0].numpy(), second[split][0][0].numpy())
    longer = build_datasets(config, ForecastSpec(lookback=20, pred_len=6))  # the same bars, cut otherwise
    assert longer["train"].spec.length == 26 and len(list((tmp_path / "cache").glob("windows-*.npz"))) == 1
    with pytest.raises(AssertionError, match="must not reload"):
        build_datasets(config, ForecastSpec(lookback=21, pred_len=5))  # contexts reach further back: other bars


def test_the_processed_data_cache_knows_the_feature_files(tmp_path):
    """A provider whose prices changed (one stock's closes rewritten) is read again, not served from the cache."""
    provider = small_provider(tmp_path / "provider")
    config = tiny_data(tmp_path, provider_uri=str(provider))
    try:
        before = build_datasets(config, TINY)["train"]
        code = str(before.panel.instruments[0])
        scale_closes(provider, code, 1.1)
        qlib.init(provider_uri=str(provider), region="cn")  # a new session: Qlib keeps read bars in memory
        after = build_datasets(config, TINY)["train"]
    finally:
        init_qlib(CN_DATA)
    assert len(list((tmp_path / "cache").glob("windows-*.npz"))) == 2
    owner = list(after.panel.instruments).index(code)
    rows = slice(after.panel.offsets[owner], after.panel.offsets[owner + 1])
    np.testing.assert_allclose(after.panel.values[rows, 3], before.panel.values[rows, 3] * 1.1, rtol=1e-6)


def test_missing_provider_folder(tmp_path):
    with pytest.raises(ConfigError, match="Qlib provider folder '.*nowhere' does not exist"):
        build_datasets(tiny_data(tmp_path, provider_uri=str(tmp_path / "nowhere")), TINY)


def test_market_with_no_instruments_in_range(tmp_path):
    """A provider whose market 'tiny' only has members in 2010 (its data linked from the real provider)."""
    provider = tmp_path / "provider"
    (provider / "instruments").mkdir(parents=True)
    for folder in ("calendars", "features"):
        (provider / folder).symlink_to(CN_DATA / folder)
    (provider / "instruments" / "tiny.txt").write_text("SH600000\t2010-01-04\t2010-12-31\n")
    with pytest.raises(KronosInputError, match="market 'tiny' has no instruments between 2016-01-01 and 2016-05-31"):
        build_datasets(tiny_data(tmp_path, provider_uri=str(provider), market="tiny"), TINY)


def test_dates_outside_the_calendar(tmp_path):
    with pytest.raises(KronosInputError, match=r"split 'train' \(2030-01-01\.\.2030-06-30\) has 0 trading day"):
        build_datasets(tiny_data(tmp_path, train=("2030-01-01", "2030-06-30")), TINY)


def test_unknown_market(tmp_path):
    with pytest.raises(ConfigError, match="market 'csi9999'"):
        build_datasets(tiny_data(tmp_path, market="csi9999"), TINY)


def test_date_range_shorter_than_a_window(tmp_path):
    with pytest.raises(KronosInputError, match=r"split 'valid' \(2016-04-01\.\.2016-04-06\) has 3 trading day"):
        build_datasets(tiny_data(tmp_path, valid=("2016-04-01", "2016-04-06")), TINY)
