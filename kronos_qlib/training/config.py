"""Finetuning configuration: plain dataclasses, read from YAML strictly (an unknown key is an error)."""
from __future__ import annotations

import copy
import dataclasses
import datetime
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..data import SPLITS, DataConfig
from ..errors import ConfigError, KronosInputError
from ..inference.spec import ForecastSpec
from ..model.configs import RELEASED


@dataclass
class StageConfig:
    """Optimization of one stage. Schedules are OneCycleLR with ``warmup_pct`` of the steps warming up."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 4e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_pct: float = 0.03
    grad_clip: float = 3.0
    accumulation_steps: int = 1
    #: Windows drawn afresh each epoch (None: all); validation uses a fixed subset of ``max_valid_windows``.
    max_train_windows: int | None = None
    max_valid_windows: int | None = None
    num_workers: int = 0


@dataclass
class FinetuneConfig:
    """Two-stage finetuning: the tokenizer on reconstruction, then the predictor with the tokenizer frozen."""

    data: DataConfig = field(default_factory=DataConfig)
    #: The windows: ``lookback`` context bars and ``pred_len`` target bars, normalized and clipped to +-``clip``,
    #: the forecast the weights are trained for (KronosModel sets it to its own ``forecast``).
    forecast: ForecastSpec = field(default_factory=ForecastSpec)
    output_dir: str = "runs/kronos"
    seed: int = 42
    #: None picks CUDA when present, else CPU.
    device: str | None = None
    train_tokenizer: bool = True
    train_basemodel: bool = True
    #: Reuse a stage that finished (done.json) with the same settings; one finished with other settings is an
    #: error. False trains a finished stage again from scratch. An unfinished stage needs --resume either way.
    skip_existing: bool = True
    #: Hub id or local folder to start from; false builds a fresh model from *_config.
    pre_trained_tokenizer: str | bool = "NeoQuasar/Kronos-Tokenizer-base"
    pre_trained_predictor: str | bool = "NeoQuasar/Kronos-small"
    #: Hub revision of the pre_trained_* Hub ids (see :func:`network_revision`); null: the latest.
    revision: str | dict | None = None
    tokenizer_config: dict | None = None
    predictor_config: dict | None = None
    #: Condition s2 on the true s1 token while training (otherwise on one sampled from the s1 logits).
    teacher_forcing: bool = True
    tokenizer_training: StageConfig = field(default_factory=lambda: StageConfig(lr=2e-4, grad_clip=2.0))
    predictor_training: StageConfig = field(default_factory=lambda: StageConfig(lr=4e-5, grad_clip=3.0))
    #: Name of the preset this configuration started from (informational).
    preset: str | None = None


def _released(tokenizer: str, predictor: str, batch_size: int) -> dict:
    return {
        "pre_trained_tokenizer": tokenizer, "pre_trained_predictor": predictor,
        "tokenizer_config": RELEASED[tokenizer], "predictor_config": RELEASED[predictor],
        "tokenizer_training": {"batch_size": batch_size, "lr": 2e-4, "grad_clip": 2.0},
        "predictor_training": {"batch_size": batch_size, "lr": 4e-5, "grad_clip": 3.0},
    }


def _from_scratch(bits: int, tokenizer: dict, predictor: dict, epochs: tuple[int, int], batch_size: int,
                  windows: tuple[int, int]) -> dict:
    """Small models trained from scratch (nothing to download): their sizes, then the training budget."""
    def training(stage_epochs: int, grad_clip: float) -> dict:
        return {"epochs": stage_epochs, "batch_size": batch_size, "lr": 1e-3, "grad_clip": grad_clip,
                "max_train_windows": windows[0], "max_valid_windows": windows[1]}

    return {
        "pre_trained_tokenizer": False, "pre_trained_predictor": False,
        "tokenizer_config": dict(d_in=6, ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, s1_bits=bits,
                                 s2_bits=bits, beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05, group_size=4,
                                 **tokenizer),
        "predictor_config": dict(s1_bits=bits, s2_bits=bits, ffn_dropout_p=0.1, attn_dropout_p=0.0,
                                 resid_dropout_p=0.1, token_dropout_p=0.0, learn_te=True, **predictor),
        "tokenizer_training": training(epochs[0], 2.0), "predictor_training": training(epochs[1], 3.0),
    }


#: Starting points for ``preset:``. mini/small/base finetune the released checkpoints (GPU-sized);
#: ``cpu`` trains small models from scratch and learns something real on a 2-core CPU in about 22 minutes (its
#: predictor is the point research/scaling.py's preset rule picked: 4 layers x 192, 6 x 16,384 windows);
#: ``tiny`` (the smoke-test scale: CI, trying a workflow end to end in a few minutes) only checks that it all runs.
PRESETS: dict[str, dict] = {
    "mini": _released("NeoQuasar/Kronos-Tokenizer-2k", "NeoQuasar/Kronos-mini", 64),
    "small": _released("NeoQuasar/Kronos-Tokenizer-base", "NeoQuasar/Kronos-small", 50),
    "base": _released("NeoQuasar/Kronos-Tokenizer-base", "NeoQuasar/Kronos-base", 32),
    "cpu": _from_scratch(6, dict(d_model=64, n_heads=4, ff_dim=128, n_enc_layers=3, n_dec_layers=3),
                         dict(n_layers=4, d_model=192, n_heads=6, ff_dim=384), epochs=(4, 6), batch_size=64,
                         windows=(16384, 4096)),
    "tiny": _from_scratch(4, dict(d_model=32, n_heads=2, ff_dim=64, n_enc_layers=2, n_dec_layers=2),
                          dict(n_layers=2, d_model=32, n_heads=2, ff_dim=64), epochs=(1, 1), batch_size=16,
                          windows=(256, 64)),
}


def network_revision(revision: str | dict | None, network: str) -> str | None:
    """The Hub revision of ``network``'s checkpoint: one for both (a branch or tag, or ``released``: the commits of
    kronos_qlib/model/configs.py's RELEASED_FILES), or ``{tokenizer: ..., predictor: ...}``, as a commit belongs
    to one repository. A local folder ignores it."""
    if isinstance(revision, dict):
        unknown = sorted(set(revision) - {"tokenizer", "predictor"})
        if unknown:
            raise ConfigError(f"revision has unknown key(s) {unknown}: give tokenizer and/or predictor")
        return revision.get(network)
    return revision


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _scalar(value: Any, kind: type, where: str) -> Any:
    """``value`` as ``kind``; YAML 1.1 reads 1e-3 as a string, so numeric strings are accepted for floats."""
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is str and isinstance(value, datetime.date):  # an unquoted YAML date
        return value.isoformat()
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(value, kind):
        return value
    raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field's type hint (scalars, optionals, unions, tuples, dicts, dataclasses)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {' or '.join(getattr(a, '__name__', str(a)) for a in args)}, got {value!r}")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis and isinstance(value, (list, tuple)):
            args = (args[0],) * len(value)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return value
    return _scalar(value, hint, where)


def _build(cls: type, values: Any, where: str):
    """Instantiate dataclass ``cls`` from a dict, checking every value; unknown keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown key '{key}' in {where} (known keys: {', '.join(names)})")
    checked = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in values.items()}
    try:
        return cls(**checked)
    except KronosInputError as err:  # a value the dataclass itself refuses (e.g. forecast.lookback: 1)
        raise ConfigError(f"{where}: {err}") from None


def config_from_dict(values: dict, where: str = "config") -> FinetuneConfig:
    """A FinetuneConfig from a dict (a parsed YAML file), starting from ``preset`` when one is named."""
    values = dict(values or {})
    preset = values.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}' in {where} (known presets: {', '.join(PRESETS)})")
        values = _merge(PRESETS[preset], values)
    config = _build(FinetuneConfig, values, where)
    for split in SPLITS:
        for i, day in enumerate(getattr(config.data, split)):
            try:
                pd.Timestamp(day)
            except ValueError as err:
                raise ConfigError(f"{where}.data.{split}[{i}] is '{day}', which is not a date ({err})") from None
    return config


def load_config(path: str | Path) -> FinetuneConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from err
    return config_from_dict(values, where=str(path))
