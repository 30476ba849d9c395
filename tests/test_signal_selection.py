"""The rule that chooses the shipped signal on valid: eligibility, screening, the incumbent's margin, no test rows."""
import json

import numpy as np
import pandas as pd
import pytest

from kronos_qlib.errors import KronosInputError
from kronos_qlib.evaluation import labels_inside_segment
from kronos_qlib.evaluation.backtest import CRITERION
from research.selection import Candidate, choose_signal, eligible, incumbent

DAYS = pd.bdate_range("2018-01-02", periods=480)
BASE = incumbent(10, 5).name
LAST = DAYS[-1]


def table(**overrides) -> pd.DataFrame:
    """Three candidates: the incumbent (whose IC is negative), a good challenger and one whose RankIC is negative."""
    rows = {
        BASE: dict(IC=-0.001, RankIC=0.02, spread=0.0002),
        "prob_up 1..10 m20 h3": dict(IC=0.02, RankIC=0.03, spread=0.0004),
        "low_forecast_risk 1..10 m5 h-": dict(IC=0.03, RankIC=-0.01, spread=0.0005),
    }
    frame = pd.DataFrame({name: {"segment": "valid", "IC": r["IC"], "RankIC": r["RankIC"],
                                 "top quintile spread (daily)": r["spread"]} for name, r in rows.items()}).T
    for column, value in overrides.items():
        frame[column] = value
    return frame.astype({c: float for c in frame.columns if c != "segment"})


def excess(gap: float, noise: float = 0.002, seed: int = 0) -> dict[str, pd.Series]:
    rng = np.random.default_rng(seed)
    common = rng.normal(0, noise, len(DAYS))
    return {BASE: pd.Series(common, index=DAYS),
            "prob_up 1..10 m20 h3": pd.Series(common + gap + rng.normal(0, 0.001, len(DAYS)), index=DAYS)}


def test_a_challenger_needs_positive_ic_rank_ic_and_top_spread_and_a_backtest():
    assert eligible(table()).tolist() == [False, True, False]
    # the ineligible challenger's book earns most, and still cannot win
    books = {**excess(gap=0.0005), "low_forecast_risk 1..10 m5 h-": excess(gap=0.01)[BASE] + 0.01}
    assert choose_signal(table(), books, BASE, LAST).chosen == "prob_up 1..10 m20 h3"
    with pytest.raises(KronosInputError, match="1 eligible challengers were not backtested"):
        choose_signal(table(), {BASE: excess(0.0005)[BASE]}, BASE, LAST)


def test_the_incumbent_stays_unless_beaten_by_two_standard_errors():
    clear = choose_signal(table(), excess(gap=0.0005), BASE, LAST)
    assert clear.chosen == "prob_up 1..10 m20 h3" and clear.t > 2
    close = choose_signal(table(), excess(gap=0.00005), BASE, LAST)
    assert close.chosen == BASE and close.challenger == "prob_up 1..10 m20 h3" and close.t < 2
    worse = choose_signal(table(), excess(gap=-0.0005), BASE, LAST)
    assert worse.chosen == BASE


def test_no_eligible_challenger_keeps_the_incumbent_even_an_ineligible_one():
    frame = table()
    frame.loc["prob_up 1..10 m20 h3", "IC"] = -0.01
    choice = choose_signal(frame, excess(gap=0.01), BASE, LAST)
    assert choice.chosen == BASE and choice.challenger is None


def test_the_rule_refuses_test_rows_and_an_unbacktested_incumbent():
    frame = table()
    frame.loc["prob_up 1..10 m20 h3", "segment"] = "test"
    with pytest.raises(KronosInputError, match=r"segment\(s\) \['test'\]: the signal is chosen on 'valid' alone"):
        choose_signal(frame, excess(gap=0.0005), BASE, LAST)
    with pytest.raises(KronosInputError, match="the incumbent '.*' was not backtested"):
        choose_signal(table(), {"prob_up 1..10 m20 h3": excess(0.0005)["prob_up 1..10 m20 h3"]}, BASE, LAST)
    # a backtest reaching past the last valid day whose label lies in valid (into test) is refused, by name
    with pytest.raises(KronosInputError, match=r"backtest of 'expected_return 1..10 m5 h-' runs to 2019-11-04, "
                                               r"past the last valid"):
        choose_signal(table(), excess(gap=0.0005), BASE, DAYS[-3])


def test_the_last_label_days_reaching_into_test_are_dropped():
    index = pd.MultiIndex.from_product([DAYS[:10], ["SH600000", "SZ000001"]], names=["datetime", "instrument"])
    label = pd.Series(np.arange(20.0), index=index)
    inside = labels_inside_segment(label)
    assert inside.index.get_level_values("datetime").max() == DAYS[7] and len(inside) == 16
    with pytest.raises(KronosInputError, match="the label has 2 days"):
        labels_inside_segment(label.loc[DAYS[:2]])


def test_candidate_names():
    assert Candidate("prob_up", 1, 10, 20, 3.0).name == "prob_up 1..10 m20 h3"
    assert BASE == "expected_return 1..10 m5 h-"
    assert CRITERION == "excess with cost (daily)"


def test_the_study_reads_test_only_after_the_choice_is_recorded(tmp_path):
    """`python -m research.signals test` refuses to run before `choose` has written its choice."""
    import subprocess

    from conftest import study, study_env

    record = tmp_path / "choice.json"
    command = study("signals", "test", "--work", str(tmp_path), "--record", str(record))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=study_env())
    assert result.returncode != 0 and "run `python -m research.signals choose` first" in result.stderr
    chosen = {"signal": "expected_return", "start": 1, "end": 10, "paths": 5, "halflife": None}
    record.write_text(json.dumps({"candidate": chosen, "incumbent_candidate": chosen,
                                  "sampling": {"T": 9.0, "top_p": 1.0, "top_k": 0, "seed": 0}}))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=study_env())
    assert result.returncode != 0 and "run `python -m research.signals choose` again" in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before fitting anything
