"""KronosAlpha158: Qlib's Alpha158 plus features read from Kronos's sampled paths, for LightGBM.

No leak: a Kronos feature at day t must come from a Kronos model none of whose training or validation targets lie
at or after t. The handler trains its own Kronos model (through :class:`KronosModel`, reusing finished stages) on
``kronos_segments`` only, which must end before the handler's first day: Kronos windows keep all their targets
inside their segment (:func:`kronos_qlib.data.windows.window_starts`), so the last target the model saw is the
last day of those segments. The check is made twice: on the configuration at start, and on every row the loader
serves (:class:`KronosFactorLoader`), naming the first instrument and date that would leak.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from qlib.data.dataset import DatasetH
from qlib.data.dataset.loader import DataLoader, NestedDataLoader

from ..errors import ConfigError, KronosInputError
from ..model.configs import PRETRAINING_END
from ..model.hub import weights_digest
from ..signals import compute_signal, price_limits
from ..training import config_from_dict
from .checked_handlers import CheckedAlpha158
from ..inference.forecast_cache import day_files, read_day
from .handler import KronosBarsHandler
from .model import KronosModel

logger = logging.getLogger(__name__)
#: Steps (trading days after t) of the forecast returns served as features, those within pred_len.
RETURN_STEPS = (1, 2, 5, 10)


def last_target(segments: dict) -> pd.Timestamp:
    """The last day any training or validation target of a Kronos model trained on ``segments`` can lie on."""
    missing = {"train", "valid"} - set(segments)
    if missing:
        raise ConfigError(f"kronos_segments needs train and valid date ranges, it lacks {', '.join(sorted(missing))}")
    return max(pd.Timestamp(end) for _, end in (segments["train"], segments["valid"]))


def check_no_leak(index: pd.MultiIndex, trained_until: pd.Timestamp, what: str = "row") -> None:
    """Raise, naming the first instrument and date, if a (datetime, instrument) row lies at or before the last
    target of the Kronos model its feature comes from."""
    dates = index.get_level_values("datetime")
    leaking = dates <= trained_until
    if leaking.any():
        first = int(np.argmax(leaking))
        raise ConfigError(
            f"Kronos feature leak: {what} {index.get_level_values('instrument')[first]} on "
            f"{pd.Timestamp(dates[first]).date()} would use a Kronos model trained on targets up to "
            f"{trained_until.date()}; start the handler after that day or train Kronos on earlier kronos_segments")


def pretrained_starts(finetune: dict) -> list[str]:
    """The pre-trained checkpoints (Hub ids or folders) a finetuning configuration starts from."""
    config = config_from_dict(dict(finetune), where="kronos.finetune")
    return [str(s) for s in (config.pre_trained_tokenizer, config.pre_trained_predictor) if s]


def check_cache_model(folder: Path, tokenizer: str, predictor: str) -> None:
    """The cache folder's key.json must name these weights: a folder of another model's paths is an error."""
    key_path = folder / "key.json"
    try:
        key = json.loads(key_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise KronosInputError(f"forecast cache {folder} has no readable key.json ({err})") from err
    for name, digest in (("tokenizer", tokenizer), ("predictor", predictor)):
        if key.get(name) != digest:
            raise KronosInputError(f"forecast cache {folder} holds paths of another model: its {name} weights "
                                   f"digest is {key.get(name)}, this Kronos model's is {digest}")


def path_features(paths: np.ndarray, last_close: np.ndarray, limit: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
    """Features of each series' paths (n, sample_count, pred_len, 6), all measured from t's close (step 0):
    the expected return to several steps, the share of rising paths, the dispersion across paths (mean minus
    the 20% quantile of the path returns) and the forecast volatility (of the paths' daily log returns). Daily
    moves are clipped at ``limit`` (see :func:`kronos_qlib.signals.compute_signal`)."""
    pred_len = paths.shape[2]

    def signal(name: str, end: int | None = None) -> np.ndarray:
        return compute_signal(name, paths, last_close, 0, end, limit=limit)

    out = {f"KRONOS_RET{k}": signal("expected_return", k) for k in RETURN_STEPS if k <= pred_len}
    out["KRONOS_PROB_UP"] = signal("prob_up")
    out["KRONOS_DISPERSION"] = signal("expected_return") - signal("downside_return")
    if pred_len >= 2:
        out["KRONOS_VOL"] = -signal("low_forecast_risk")
    return out


def read_factors(folder: Path, start: pd.Timestamp, end: pd.Timestamp, price_limit: str | float | None = None
                 ) -> pd.DataFrame:
    """The features of every cached day in [start, end], indexed (datetime, instrument), columns
    ("feature", name); sampled daily moves clipped at ``price_limit`` (see :mod:`kronos_qlib.signals.price_limits`).
    No digest check here: :class:`KronosAlpha158` first fills the cache for every member, which samples again any
    forecast whose bars changed, so each member's row is of the bars the provider holds now."""
    frames = []
    for day, path in day_files(folder, start, end):
        instruments, paths, last_close = read_day(path)
        index = pd.MultiIndex.from_product([[day], instruments], names=["datetime", "instrument"])
        limit = price_limits(list(instruments), price_limit)
        frames.append(pd.DataFrame(path_features(paths, last_close, limit), index=index))
    if not frames:
        raise KronosInputError(f"forecast cache {folder} holds no day in {start.date()}..{end.date()}")
    frame = pd.concat(frames).sort_index()
    frame.columns = pd.MultiIndex.from_product([["feature"], frame.columns])
    return frame


class KronosFactorLoader(DataLoader):
    """Serves precomputed Kronos features by date, checking each served row against the model's last target."""

    def __init__(self, factors: pd.DataFrame, trained_until: pd.Timestamp):
        self.factors, self.trained_until = factors, pd.Timestamp(trained_until)

    def load(self, instruments=None, start_time=None, end_time=None) -> pd.DataFrame:
        frame = self.factors.loc[pd.Timestamp(start_time) if start_time else None:
                                 pd.Timestamp(end_time) if end_time else None]
        check_no_leak(frame.index, self.trained_until)
        return frame


class KronosAlpha158(CheckedAlpha158):
    """Alpha158's features and label, plus ``KRONOS_*`` features from the paths of a Kronos model trained on
    ``kronos_segments`` (train and valid date ranges, all before ``start_time``; see the module docstring).

    ``kronos`` holds :class:`KronosModel` keyword arguments and must include ``finetune``: released checkpoints
    used as they are were trained on unknown dates, so no leak could be ruled out. For the same reason a finetuning
    that starts from pre-trained weights (the presets mini, small and base) is refused unless
    ``allow_pretraining_overlap`` is true. The paths of every day from
    ``start_time`` to ``end_time`` are sampled into (or read from) the model's forecast cache. The Alpha158
    processors (fitted on fit_start_time..fit_end_time) apply to the Kronos features too.
    """

    def __init__(self, instruments: str = "csi300", start_time=None, end_time=None, kronos: dict | None = None,
                 kronos_segments: dict | None = None, allow_pretraining_overlap: bool = False, init_data: bool = True,
                 **kwargs):
        if not kronos or "finetune" not in kronos:
            raise ConfigError("KronosAlpha158 needs kronos.finetune (KronosModel settings that train on "
                              "kronos_segments): checkpoints used as they are have unknown training dates")
        starts = pretrained_starts(kronos["finetune"])
        if starts and not allow_pretraining_overlap:
            raise ConfigError(
                f"Kronos feature leak: kronos.finetune starts from pre-trained weights ({', '.join(starts)}), whose "
                f"training data cannot be ruled out of the handler's days (the released checkpoints were pretrained on "
                f"data running to about {PRETRAINING_END}); train from scratch (preset: cpu) or set "
                f"allow_pretraining_overlap: true to accept it")
        self.trained_until = last_target(kronos_segments or {})
        if start_time is None or end_time is None:
            raise ConfigError("KronosAlpha158 needs start_time and end_time: the days whose Kronos paths it reads")
        start = pd.Timestamp(start_time)
        if start <= self.trained_until:
            raise ConfigError(f"Kronos feature leak: the handler starts {start.date()} but kronos_segments end "
                              f"{self.trained_until.date()}: Kronos's training/valid targets must all lie before "
                              f"the first row the handler serves")
        super().__init__(instruments=instruments, start_time=start_time, end_time=end_time, init_data=False,
                         **kwargs)
        model = KronosModel(**kronos)
        bars = KronosBarsHandler(instruments, start_time=kronos_segments["train"][0], end_time=end_time,
                                 history=model.forecast.lookback)
        dataset = DatasetH(bars, segments={name: tuple(kronos_segments[name]) for name in ("train", "valid")})
        if model.cache_dir is None:
            raise ConfigError("KronosAlpha158 reads the features from the forecast cache: set kronos.cache_dir")
        model.fit(dataset)
        model.fill_cache(dataset, slice(start, pd.Timestamp(end_time)))
        self.forecast_folder = Path(model.forecast_folder)
        check_cache_model(self.forecast_folder, weights_digest(model.tokenizer), weights_digest(model.model))
        factors = read_factors(self.forecast_folder, start, pd.Timestamp(end_time), model.price_limit)
        logger.info("KronosAlpha158: %d Kronos feature rows (%s) from %s, Kronos trained on targets up to %s",
                    len(factors), ", ".join(factors.columns.get_level_values(1)), self.forecast_folder,
                    self.trained_until.date())
        self.data_loader = NestedDataLoader([self.data_loader, KronosFactorLoader(factors, self.trained_until)],
                                            join="left")
        if init_data:
            self.setup_data()
