"""The CPU preset is the point the scaling study's rule picks, and the rule is the one written down."""
import json

import pytest

from kronos_qlib.training.config import PRESETS
from research import scaling


def point(loss: float, train_s: float = 600.0) -> dict:
    return {"valid_loss": loss, "train_s": train_s}


def test_a_challenger_must_beat_the_preset_by_more_than_the_margin():
    incumbent, challenger = list(scaling.POINTS)[:2]
    close = {incumbent: point(1.580), challenger: point(1.580 - scaling.MARGIN / 2)}
    assert scaling.choose_preset(close) == incumbent
    clear = {incumbent: point(1.580), challenger: point(1.580 - 2 * scaling.MARGIN)}
    assert scaling.choose_preset(clear) == challenger


def test_a_point_over_the_wall_budget_is_not_chosen():
    incumbent, challenger = list(scaling.POINTS)[:2]
    records = {incumbent: point(1.580), challenger: point(1.50, train_s=scaling.WALL_BUDGET_S + 1)}
    assert scaling.choose_preset(records) == incumbent


def test_the_rule_needs_the_incumbent():
    with pytest.raises(ValueError, match="incumbent"):
        scaling.choose_preset({list(scaling.POINTS)[1]: point(1.5)})


def test_the_shipped_cpu_preset_is_the_point_the_rule_picks_from_the_recorded_study():
    records = json.loads(scaling.RECORDS.read_text())
    chosen = scaling.choose_preset(records)
    size, epochs, windows = scaling.POINTS[chosen]
    preset = PRESETS["cpu"]
    assert {k: preset["predictor_config"][k] for k in scaling.SIZES[size]} == scaling.SIZES[size]
    assert preset["predictor_training"]["epochs"] == epochs
    assert preset["predictor_training"]["max_train_windows"] == windows
