"""The cross-sectional return head: its samples' targets stay inside their segment, batches hold whole days, a
saved head scores as before, the frozen probe leaves the generative networks unchanged, and the head stage
resumes, reuses and refuses like the generative ones."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from kronos_qlib.data import BarPanel, day_batches, head_samples
from kronos_qlib.errors import KronosInputError
from kronos_qlib.features import BAR_COLUMNS, CLOSE
from kronos_qlib.model import ReturnHead
from kronos_qlib.model.hub import weights_digest
from kronos_qlib.errors import ConfigError
from kronos_qlib.inference.head import contexts, score_contexts
from kronos_qlib.training.head import HeadConfig, HeadStage, day_loss, evaluate, extract_states
from kronos_qlib.training.stages import predictor_stage

LOOKBACK = 20


@pytest.fixture(scope="module")
def panel() -> BarPanel:
    """Eight random-walk stocks over 160 business days, one suspended for a week."""
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2020-01-01", periods=160)
    frames = []
    for i in range(8):
        close = 10 * np.exp(np.cumsum(rng.normal(0, 0.02, len(dates))))
        bars = pd.DataFrame({"open": close, "high": close * 1.01, "low": close * 0.99, "close": close,
                             "volume": rng.uniform(1e5, 2e5, len(dates))}, index=dates)
        bars["amount"] = bars["volume"] * close
        if i == 3:
            bars.iloc[100:105] = np.nan
        bars.index = pd.MultiIndex.from_product([[f"S{i}"], dates], names=["instrument", "datetime"])
        frames.append(bars[list(BAR_COLUMNS)])
    return BarPanel.from_frame(pd.concat(frames))


@pytest.mark.parametrize("horizon", [1, 5, 10])
def test_no_target_beyond_the_segment(panel, horizon):
    end = pd.Timestamp(panel.dates[130])
    samples = head_samples(panel, LOOKBACK, horizon, "2020-02-10", end)
    exit_rows = samples.starts + LOOKBACK + horizon
    assert pd.Timestamp(panel.dates[exit_rows].max()) <= end
    assert pd.Timestamp(panel.dates[exit_rows].max()) == end  # the last admissible day is kept, not over-trimmed
    entry_rows = samples.starts + LOOKBACK
    assert (panel.dates[entry_rows] >= np.datetime64("2020-02-10")).all()
    assert np.allclose(samples.returns, panel.values[exit_rows, CLOSE] / panel.values[entry_rows, CLOSE] - 1)
    # membership is that of day t, the last context bar
    spans = {"S0": [(pd.Timestamp("2020-01-01"), pd.Timestamp(samples.days[0]))]}
    member = head_samples(panel, LOOKBACK, horizon, "2020-02-10", end, spans, min_members=1)
    assert set(member.instruments) == {"S0"} and member.days.max() == samples.days[0]


def test_targets_are_per_day_ranks(panel):
    samples = head_samples(panel, LOOKBACK, 5, "2020-02-10", "2020-07-31")
    for rows in samples.day_slices():
        t, r = samples.targets[rows], samples.returns[rows]
        assert abs(t.mean()) < 1e-5 and t.std() == pytest.approx(1.0, rel=1e-4)
        assert (np.argsort(t, kind="stable") == np.argsort(r, kind="stable")).all()


def test_a_horizon_below_one_or_an_empty_range_is_refused(panel):
    with pytest.raises(KronosInputError, match="horizon"):
        head_samples(panel, LOOKBACK, 0, "2020-02-10", "2020-07-31")
    with pytest.raises(KronosInputError, match="no stock-day"):
        head_samples(panel, LOOKBACK, 5, "2020-07-27", "2020-07-30")


def test_batches_hold_whole_days_and_every_row_once(panel):
    samples = head_samples(panel, LOOKBACK, 5, "2020-02-10", "2020-07-31")
    sizes = pd.Series(samples.days).value_counts()
    seen = []
    for rows in day_batches(samples, days_per_batch=3, seed=1):
        in_batch = pd.Series(samples.days[rows]).value_counts()
        assert len(in_batch) <= 3 and (in_batch == sizes[in_batch.index]).all()
        seen.append(rows)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(samples)))


def test_ic_loss_is_minus_the_mean_daily_correlation():
    targets = torch.tensor([1.0, 2.0, 3.0, -1.0, 0.0, 1.0])
    days = torch.tensor([0, 0, 0, 1, 1, 1])
    assert float(day_loss(targets * 3 + 1, targets, days, "ic")) == pytest.approx(-1.0, abs=1e-5)
    mixed = torch.tensor([1.0, 2.0, 3.0, 1.0, 0.0, -1.0])
    assert float(day_loss(mixed, targets, days, "ic")) == pytest.approx(0.0, abs=1e-5)
    assert float(day_loss(targets, targets, days, "mse")) == 0.0


def test_saved_head_gives_the_same_scores(tmp_path):
    torch.manual_seed(0)
    head = ReturnHead(16, hidden=8, pool=2).eval()
    states = torch.randn(5, 3, 16)
    head.save_pretrained(tmp_path / "head")
    loaded = ReturnHead.from_pretrained(tmp_path / "head")
    assert torch.equal(head(states), loaded(states))
    with pytest.raises(KronosInputError, match="hidden states"):
        loaded(torch.randn(5, 1, 16))


RANGES = {"train": ("2020-02-10", "2020-05-29"), "valid": ("2020-06-01", "2020-07-31")}


def stage(panel, tokenizer, predictor, folder, **settings) -> HeadStage:
    config = HeadConfig(**{"horizon": 5, "epochs": 3, "days_per_batch": 4, "day_stride": 1, **settings})
    samples = {s: head_samples(panel, LOOKBACK, config.horizon, *r) for s, r in RANGES.items()}
    return HeadStage(config, folder, tokenizer, predictor, panel, samples, LOOKBACK, 5.0, torch.device("cpu"))


def test_probe_leaves_the_generative_networks_unchanged(panel, tokenizer, predictor, tmp_path):
    before = weights_digest(tokenizer), weights_digest(predictor)
    probe = stage(panel, tokenizer, predictor, tmp_path / "head")
    head, read = probe.run()
    assert (weights_digest(tokenizer), weights_digest(predictor)) == before and read is predictor
    curve = [json.loads(line) for line in (tmp_path / "head" / "metrics.jsonl").read_text().splitlines()]
    states = extract_states(tokenizer, predictor, panel, probe.samples["valid"], LOOKBACK, 5.0, pool=1)
    assert len(curve) == 3 and min(c["valid_loss"] for c in curve) == pytest.approx(
        evaluate(head, states, probe.samples["valid"], "ic")[0], abs=1e-6)
    # what predict computes for the same stock-days is what the head scored in training
    scores = score_contexts(tokenizer, predictor, head, panel, probe.samples["valid"].starts, LOOKBACK, 5.0, 7)
    np.testing.assert_allclose(scores, evaluate(head, states, probe.samples["valid"], "ic")[1], atol=1e-5)


@pytest.mark.parametrize("variant", ["joint", "control"])
def test_joint_and_control_train_their_own_predictor(panel, tokenizer, predictor, tmp_path, variant):
    before = weights_digest(predictor)
    _, trained = stage(panel, tokenizer, predictor, tmp_path / "head", variant=variant, epochs=1,
                       days_per_batch=20).run()
    assert weights_digest(predictor) == before  # the generative checkpoint is copied, not changed
    assert weights_digest(trained) != before
    assert (tmp_path / "head" / "predictor" / "model.safetensors").is_file()


def test_one_pass_gives_the_predictor_stage_loss(tokenizer, predictor):
    x, stamp = torch.randn(3, 12, 6), torch.randint(0, 7, (3, 12, 5)).float()
    with torch.no_grad():
        s1, s2 = tokenizer.encode(x, half=True)
        loss, states = predictor.next_token_loss_and_states(s1, s2, stamp)
        expected = predictor_stage(predictor, tokenizer).compute(predictor, x, stamp)["loss"]
        assert torch.allclose(loss, expected, atol=1e-6)
        assert torch.allclose(states, predictor.hidden_states(s1, s2, stamp), atol=1e-6)


def test_killed_head_stage_resumes_to_the_same_head(panel, tokenizer, predictor, tmp_path, monkeypatch):
    whole, _ = stage(panel, tokenizer, predictor, tmp_path / "whole").run()
    killed = stage(panel, tokenizer, predictor, tmp_path / "killed")
    calls = []
    original = HeadStage._valid_loss

    def dies_in_epoch_two(self, states):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, states)

    monkeypatch.setattr(HeadStage, "_valid_loss", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        killed.run()
    monkeypatch.setattr(HeadStage, "_valid_loss", original)
    assert not (tmp_path / "killed" / "done.json").exists()
    resumed, _ = stage(panel, tokenizer, predictor, tmp_path / "killed").run()
    assert weights_digest(resumed) == weights_digest(whole)
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 3


def test_finished_head_stage_is_reused_and_other_settings_refused(panel, tokenizer, predictor, tmp_path):
    first, _ = stage(panel, tokenizer, predictor, tmp_path / "head", epochs=1).run()
    again, _ = stage(panel, tokenizer, predictor, tmp_path / "head", epochs=1).run()
    assert weights_digest(first) == weights_digest(again)
    with pytest.raises(ConfigError, match="other settings"):
        stage(panel, tokenizer, predictor, tmp_path / "head", epochs=2).run()


def test_contexts_read_nothing_after_their_last_bar(panel):
    starts = np.array([0, 30])
    x, _ = contexts(panel, starts, LOOKBACK, 5.0)
    changed = dataclasses.replace(panel, values=panel.values.copy())
    changed.values[starts + LOOKBACK] *= 3.0  # the bar after each context
    np.testing.assert_array_equal(x.numpy(), contexts(changed, starts, LOOKBACK, 5.0)[0].numpy())


def test_bad_head_settings_name_the_key():
    with pytest.raises(ConfigError, match="horizn"):
        HeadConfig.build({"horizn": 5}, "KronosModel head")
    with pytest.raises(ConfigError, match="variant"):
        HeadConfig(variant="frozen")


def test_kronos_model_head_settings_are_checked_at_construction():
    from kronos_qlib import KronosModel

    with pytest.raises(ConfigError, match="finetune"):
        KronosModel(signal="head")
    with pytest.raises(ConfigError, match="signal: head only"):
        KronosModel(head={"horizon": 5})
    with pytest.raises(ConfigError, match="horizn"):
        KronosModel(signal="head", head={"horizn": 5}, finetune={"preset": "tiny", "output_dir": "runs/x"})
    model = KronosModel(signal="head", head={"variant": "joint", "horizon": 10},
                        finetune={"preset": "tiny", "output_dir": "runs/x"})
    assert model.head_config.folder_name() == "head_joint_h10"
