"""Numeric precision of forecasting: fp32 (the reference), bf16 autocast, or int8 linear layers on the CPU.

Reduced precision changes the logits slightly, so a draw that falls near a probability boundary can pick another
token: forecasts made at another precision are other forecasts, and the forecast cache keys on the resolved
precision. ``benchmarks/bench_forecasting.py`` measures the speed and what it changes (greedy agreement with
fp32, rank correlation of the day's signal).

- ``fp32``: float32 everywhere; the conformance vectors hold here.
- ``bf16``: matrix products under ``torch.autocast(bfloat16)``; norms, softmax and sampling stay float32.
- ``int8``: dynamic quantization of the large linear layers (weights int8, activations quantized per batch);
  CPU only (``torch.ao.quantization.quantize_dynamic``), applied to copies so the caller's networks are untouched.
- ``auto``: bf16 on a CUDA GPU that supports it, fp32 elsewhere.
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from torch import nn

from ..errors import KronosInputError

PRECISIONS = ("auto", "fp32", "bf16", "int8")
#: Linear layers smaller than this on either side (the 6-feature bar embedding) stay float: too small to gain.
MIN_QUANTIZED_FEATURES = 64


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``precision`` means on ``device``: fp32, bf16 or int8; an error for an impossible pair."""
    if precision not in PRECISIONS:
        raise KronosInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise KronosInputError(f"precision 'int8' (dynamic quantization) runs on the CPU only, not on {device}: "
                               "use 'bf16' on a GPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise KronosInputError(f"precision 'bf16' is not supported by this GPU ({torch.cuda.get_device_name(device)})"
                               ": use 'fp32'")
    return precision


def quantize_linear_layers(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose linear layers of at least MIN_QUANTIZED_FEATURES in and out are int8."""
    names = {name for name, layer in module.named_modules() if isinstance(layer, nn.Linear)
             and min(layer.in_features, layer.out_features) >= MIN_QUANTIZED_FEATURES}
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    with warnings.catch_warnings():  # torch deprecates eager-mode quantization in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(module).eval(), {n: qconfig for n in names},
                                                      dtype=torch.qint8)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context forecasting runs in: bf16 autocast for ``bf16``, nothing otherwise."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
