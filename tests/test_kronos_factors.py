"""KronosAlpha158's Kronos features: what they measure, and the no-leak rule (a feature at day t comes from a Kronos
model whose training and valid targets all lie before t), checked on the configuration and on every served row."""
import json

import numpy as np
import pandas as pd
import pytest

from kronos_qlib.errors import ConfigError, KronosInputError
from kronos_qlib.integration.kronos_factors import (KronosAlpha158, KronosFactorLoader, check_cache_model,
                                                    check_no_leak, last_target, path_features, read_factors)

SEGMENTS = {"train": ["2015-01-01", "2015-09-30"], "valid": ["2015-10-01", "2015-12-31"]}
FINETUNE = {"finetune": {"preset": "tiny", "output_dir": "unused"}}


def factor_frame(days) -> pd.DataFrame:
    index = pd.MultiIndex.from_product([pd.DatetimeIndex(days), ["SH600000", "SZ000001"]],
                                       names=["datetime", "instrument"])
    return pd.DataFrame({("feature", "KRONOS_RET1"): np.arange(len(index), dtype=float)}, index=index)


def test_last_target_is_the_end_of_the_later_segment():
    assert last_target(SEGMENTS) == pd.Timestamp("2015-12-31")
    with pytest.raises(ConfigError, match="kronos_segments needs train and valid.*lacks valid"):
        last_target({"train": SEGMENTS["train"]})


def test_a_row_at_or_before_the_last_kronos_target_is_a_leak_named_by_instrument_and_date():
    trained_until = pd.Timestamp("2015-12-31")
    check_no_leak(factor_frame(["2016-01-04", "2016-01-05"]).index, trained_until)
    for day in ("2015-12-31", "2015-06-01"):  # on the last target day itself, and inside the training range
        with pytest.raises(ConfigError, match=f"leak: row SH600000 on {day} would use a Kronos model trained on "
                                              f"targets up to 2015-12-31"):
            check_no_leak(factor_frame([day, "2016-01-04"]).index, trained_until)


def test_the_loader_refuses_to_serve_a_leaking_training_row():
    """A LightGBM training row whose Kronos feature comes from a model trained on its own date is refused."""
    loader = KronosFactorLoader(factor_frame(["2015-12-30", "2015-12-31", "2016-01-04"]), pd.Timestamp("2015-12-31"))
    assert loader.load("csi300", "2016-01-01", "2016-01-31").index.get_level_values(0).unique().tolist() == [
        pd.Timestamp("2016-01-04")]
    with pytest.raises(ConfigError, match="row SH600000 on 2015-12-30"):
        loader.load("csi300", "2015-12-01", "2016-01-31")


@pytest.mark.parametrize("start", ["2015-12-31", "2015-11-02", "2015-01-01"])
def test_the_handler_refuses_a_leaking_configuration_before_training(start):
    with pytest.raises(ConfigError, match=f"the handler starts {start} but kronos_segments end 2015-12-31"):
        KronosAlpha158(start_time=start, end_time="2016-06-30", kronos=FINETUNE, kronos_segments=SEGMENTS)


def test_the_handler_needs_a_kronos_model_of_known_training_dates():
    with pytest.raises(ConfigError, match="needs kronos.finetune"):
        KronosAlpha158(start_time="2016-01-04", end_time="2016-06-30", kronos={"predictor": "NeoQuasar/Kronos-small"},
                       kronos_segments=SEGMENTS)


@pytest.mark.parametrize("preset", ["mini", "small", "base"])
def test_pretrained_starts_are_refused_unless_allowed(preset):
    """The released checkpoints were pretrained on data into 2024: their features on earlier days may leak."""
    kronos = {"finetune": {"preset": preset, "output_dir": "unused"}}
    with pytest.raises(ConfigError, match=r"Kronos feature leak: kronos.finetune starts from pre-trained weights "
                                          r"\(NeoQuasar/.*\).*about 2024-02.*allow_pretraining_overlap: true"):
        KronosAlpha158(start_time="2016-01-04", end_time="2016-06-30", kronos=kronos, kronos_segments=SEGMENTS)
    # allowed: the configuration goes on to its next check (here a leaking start, refused before any training)
    with pytest.raises(ConfigError, match="the handler starts 2015-12-31 but kronos_segments end"):
        KronosAlpha158(start_time="2015-12-31", end_time="2016-06-30", kronos=kronos, kronos_segments=SEGMENTS,
                       allow_pretraining_overlap=True)


def test_path_features_measure_returns_from_the_last_close():
    pred_len, closes = 10, np.array([[101.0 + k for k in range(10)], [99.0 - k for k in range(10)]])  # 2 paths
    paths = np.zeros((1, 2, pred_len, 6))
    paths[..., 3] = closes
    out = path_features(paths, np.array([100.0]))
    assert set(out) == {"KRONOS_RET1", "KRONOS_RET2", "KRONOS_RET5", "KRONOS_RET10", "KRONOS_PROB_UP",
                        "KRONOS_DISPERSION", "KRONOS_VOL"}
    assert out["KRONOS_RET1"][0] == pytest.approx((0.01 - 0.01) / 2)
    assert out["KRONOS_RET10"][0] == pytest.approx((0.10 - 0.10) / 2)
    assert out["KRONOS_PROB_UP"][0] == 0.5
    assert out["KRONOS_DISPERSION"][0] > 0 and out["KRONOS_VOL"][0] > 0
    short = path_features(paths[:, :, :3], np.array([100.0]))
    assert "KRONOS_RET5" not in short and "KRONOS_RET2" in short


def write_cache(folder, key: dict, days) -> None:
    folder.mkdir()
    (folder / "key.json").write_text(json.dumps(key))
    for day in days:
        paths = np.full((2, 3, 4, 6), 10.0)
        np.savez(folder / f"{day}.npz", instruments=np.array(["SH600000", "SZ000001"]), paths=paths,
                 last_close=np.array([10.0, 9.0]))  # no inputs: a file of before version 4 reads as well


def test_a_cache_of_another_model_is_refused_by_name(tmp_path):
    folder = tmp_path / "abc"
    write_cache(folder, {"tokenizer": "t1", "predictor": "p1"}, ["2016-01-04"])
    check_cache_model(folder, "t1", "p1")
    with pytest.raises(KronosInputError, match=f"forecast cache {folder} holds paths of another model: its predictor "
                                               f"weights digest is p1, this Kronos model's is p2"):
        check_cache_model(folder, "t1", "p2")
    with pytest.raises(KronosInputError, match="no readable key.json"):
        check_cache_model(tmp_path, "t1", "p1")


def test_read_factors_keeps_the_requested_days(tmp_path):
    folder = tmp_path / "abc"
    write_cache(folder, {}, ["2016-01-04", "2016-01-05", "2016-02-01"])
    frame = read_factors(folder, pd.Timestamp("2016-01-05"), pd.Timestamp("2016-01-31"))
    assert frame.index.get_level_values("datetime").unique().tolist() == [pd.Timestamp("2016-01-05")]
    assert frame[("feature", "KRONOS_RET1")].tolist() == [0.0, pytest.approx(10 / 9 - 1)]
    with pytest.raises(KronosInputError, match="holds no day in 2017-01-01..2017-01-31"):
        read_factors(folder, pd.Timestamp("2017-01-01"), pd.Timestamp("2017-01-31"))
