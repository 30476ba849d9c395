"""Bad input to the networks gets an error naming the problem, not a traceback from inside torch."""
import pytest
import torch

from kronos_qlib import KronosInputError


def test_wrong_feature_width(tokenizer):
    with pytest.raises(KronosInputError, match=r"shape \(batch, length, 6\), got \(2, 10, 5\)"):
        tokenizer.encode(torch.zeros(2, 10, 5))


def test_nan_in_bars(tokenizer):
    x = torch.zeros(2, 10, 6)
    x[1, 7, 3] = float("nan")
    with pytest.raises(KronosInputError, match="batch 1, position 7, feature 3"):
        tokenizer.encode(x)


def test_inf_in_bars_during_training(tokenizer):
    x = torch.zeros(1, 4, 6)
    x[0, 0, 0] = float("inf")
    with pytest.raises(KronosInputError, match="non-finite"):
        tokenizer(x)


def test_token_ids_outside_vocabulary(tokenizer, predictor):
    ok = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(KronosInputError, match=r"s2 indices holds token ids outside the vocabulary \[0, 32\)"):
        tokenizer.decode((ok, ok + 32), half=True)
    with pytest.raises(KronosInputError, match="s1_ids holds token ids outside"):
        predictor.decode_s1(ok - 1, ok)
    with pytest.raises(KronosInputError, match=r"indices holds token ids outside the vocabulary \[0, 1024\)"):
        tokenizer.decode(ok + 1024)


def test_s1_s2_shape_mismatch(tokenizer, predictor):
    a, b = torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)
    with pytest.raises(KronosInputError, match="same shape"):
        tokenizer.decode((a, b), half=True)
    with pytest.raises(KronosInputError, match="same shape"):
        predictor(a, b)


def test_float_token_ids(predictor):
    with pytest.raises(KronosInputError, match="integer tensor"):
        predictor.decode_s1(torch.zeros(1, 4), torch.zeros(1, 4))


def test_bad_time_stamp(predictor):
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(KronosInputError, match=r"stamp must have shape \(batch, length, 5\)"):
        predictor.decode_s1(ids, ids, torch.zeros(1, 4, 4))
    stamp = torch.zeros(1, 4, 5)
    stamp[0, 2, 4] = 13
    with pytest.raises(KronosInputError, match=r"'month' must lie in \[0, 13\)"):
        predictor.decode_s1(ids, ids, stamp)


def test_teacher_forcing_needs_targets(predictor):
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(KronosInputError, match="needs s1_targets"):
        predictor(ids, ids, use_teacher_forcing=True)


def test_half_decoding_needs_a_pair(tokenizer):
    with pytest.raises(KronosInputError, match="pair"):
        tokenizer.decode(torch.zeros(1, 4, dtype=torch.long), half=True)
