"""The forecast settings as values: checked once where they are built, then passed whole.

``ForecastSpec`` says what is forecast (it also cuts the training windows), ``Sampling`` how paths are drawn.
Both travel unchanged through ``KronosModel``, ``KronosPredictor``, the sampler and the forecast-cache key, so
no layer re-checks or re-interprets a setting.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TypeVar

import numpy as np

from ..errors import ConfigError, KronosInputError

_S = TypeVar("_S", bound="_Settings")


def as_int(name: str, value, minimum: int) -> int:
    """``value`` as a Python int >= ``minimum``; numpy integers are accepted, bools and floats are not."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise KronosInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _as_float(name: str, value) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise KronosInputError(f"{name} must be a number, got {value!r}")
    return float(value)


class _Settings:
    """Shared by the frozen settings dataclasses: building from a config mapping and a plain-dict view."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def build(cls: type[_S], value: Mapping | _S | None, where: str) -> _S:
        """From ``None`` (the defaults), an instance, or a mapping of field names (``where`` names the option)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping of {cls.__name__} fields, got {type(value).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {unknown}; known keys: {', '.join(known)}")
        return cls(**value)

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)


@dataclass(frozen=True)
class ForecastSpec(_Settings):
    """What one forecast is: ``lookback`` context bars, ``pred_len`` steps, bars normalized and clipped to
    +-``clip``, at most ``max_context`` tokens seen by the predictor (older ones slide out)."""

    lookback: int = 90
    pred_len: int = 10
    clip: float = 5.0
    max_context: int = 512

    def __post_init__(self):
        self._set("lookback", as_int("lookback", self.lookback, 2))
        self._set("pred_len", as_int("pred_len", self.pred_len, 1))
        self._set("max_context", as_int("max_context", self.max_context, 1))
        self._set("clip", _as_float("clip", self.clip))
        if not self.clip > 0:
            raise KronosInputError(f"clip must be > 0, got {self.clip}")
        if self.pred_len > self.max_context:
            raise KronosInputError(f"pred_len ({self.pred_len}) cannot exceed max_context ({self.max_context})")

    @property
    def length(self) -> int:
        """Bars in a training window: context and targets."""
        return self.lookback + self.pred_len


@dataclass(frozen=True)
class Sampling(_Settings):
    """How paths are drawn: temperature ``T``, then top-k (0 = off, 1 = greedy), then nucleus ``top_p``;
    ``sample_count`` paths per series; ``seed`` picks the draws (see :func:`kronos_qlib.inference.series_key`).

    The defaults are what the shipped Kronos workflows sample with, chosen on valid by the calibration study
    (a test keeps the three equal); Kronos's own ``predict`` defaults (T 1.0, top_p 0.9) live only in
    :meth:`KronosPredictor.predict`, for code written against the original."""

    T: float = 1.2
    top_k: int = 0
    top_p: float = 1.0
    sample_count: int = 5
    seed: int = 0

    def __post_init__(self):
        self._set("T", _as_float("T (temperature)", self.T))
        if not self.T > 0:
            raise KronosInputError(f"T (temperature) must be > 0, got {self.T}")
        self._set("top_k", as_int("top_k", self.top_k, 0))
        self._set("top_p", _as_float("top_p", self.top_p))
        if not 0 < self.top_p <= 1:
            raise KronosInputError(f"top_p must lie in (0, 1], got {self.top_p}")
        self._set("sample_count", as_int("sample_count", self.sample_count, 1))
        self._set("seed", as_int("seed", self.seed, 0))

    @property
    def greedy(self) -> bool:
        return self.top_k == 1
