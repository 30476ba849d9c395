"""Reduced precision: which precision each request means on a device, int8 copies that leave the caller's
networks alone, bf16 autocast, and forecasts that stay close to fp32's."""
import numpy as np
import pytest
import torch
from torch import nn

from kronos_qlib import KronosInputError, KronosPredictor, Sampling
from kronos_qlib.inference.precision import resolve_precision

from test_forecasting import GREEDY, bars, window  # noqa: F401  (bars: the conformance series, a fixture)


@pytest.mark.parametrize("asked,expected", [("auto", "fp32"), ("fp32", "fp32"), ("bf16", "bf16"), ("int8", "int8")])
def test_what_each_precision_means_on_the_cpu(asked, expected):
    assert resolve_precision(asked, torch.device("cpu")) == expected


def test_impossible_precisions_are_named():
    with pytest.raises(KronosInputError, match=r"precision must be one of auto, fp32, bf16, int8, got 'fp16'"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(KronosInputError, match=r"'int8' \(dynamic quantization\) runs on the CPU only, not on cuda"):
        resolve_precision("int8", torch.device("cuda"))


def test_int8_quantizes_copies_of_the_large_linear_layers(predictor, tokenizer):
    before = {k: v.clone() for k, v in predictor.state_dict().items()}
    kp = KronosPredictor(predictor, tokenizer, device="cpu", precision="int8")
    quantized = [m for m in kp.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert quantized and not any(isinstance(m, nn.Linear) and min(m.in_features, m.out_features) >= 64
                                 for m in kp.model.modules())
    assert isinstance(kp.tokenizer.embed, nn.Linear)  # the 6-feature bar embedding stays float
    assert all(torch.equal(before[k], v) for k, v in predictor.state_dict().items())


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_reduced_precision_forecasts_stay_close_to_fp32(predictor, tokenizer, bars, precision):  # noqa: F811
    parts = [window(bars, 37 * i, 90, 10) for i in range(4)]
    reference = KronosPredictor(predictor, tokenizer, device="cpu").predict_paths(
        *map(list, zip(*parts)), 10, Sampling(sample_count=1, **GREEDY))
    reduced = KronosPredictor(predictor, tokenizer, device="cpu", precision=precision).predict_paths(
        *map(list, zip(*parts)), 10, Sampling(sample_count=1, **GREEDY))
    assert reduced.shape == reference.shape and np.isfinite(reduced).all()
    close = np.abs(reduced[..., 3] - reference[..., 3]) / np.abs(reference[..., 3])
    assert np.median(close) < 0.02  # same price level; most greedy steps agree
    again = KronosPredictor(predictor, tokenizer, device="cpu", precision=precision).predict_paths(
        *map(list, zip(*parts)), 10, Sampling(sample_count=1, **GREEDY))
    np.testing.assert_array_equal(reduced, again)
