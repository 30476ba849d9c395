"""KronosModel: the Qlib ``Model`` that finetunes (or loads) Kronos and scores stocks from sampled paths."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from qlib.config import C
from qlib.data import D
from qlib.data.dataset import DatasetH
from qlib.model.base import Model
from tqdm.auto import tqdm

from ..data import BarPanel, check_split_length, data_fingerprint, split_datasets
from ..errors import ConfigError, KronosInputError
from ..features import CLOSE, time_features
from ..inference import KronosPredictor
from ..inference.sampling import check_sampling_args
from ..model import Kronos, KronosTokenizer
from ..model.hub import weights_digest
from ..signals import SIGNALS, compute_signal
from ..training import SequentialTrainer, config_from_dict
from .forecast_cache import ForecastCache
from .handler import KronosBarsHandler

logger = logging.getLogger(__name__)


def _future_days(calendar: pd.DatetimeIndex, day: pd.Timestamp, n: int) -> pd.DatetimeIndex:
    """The n trading days after ``day``; past the calendar's end, weekdays stand in (only their time features
    are used)."""
    after = calendar[calendar > day][:n]
    if len(after) < n:
        extra = pd.bdate_range(max(day, calendar[-1]) + pd.offsets.BDay(), periods=n - len(after))
        after = after.append(extra)
    return after


class KronosModel(Model):
    """Kronos as a Qlib model: ``fit`` finetunes or loads it, ``predict`` scores every member every day.

    Args:
        tokenizer, predictor: Hub ids or local folders, used when ``finetune`` is not given.
        finetune: a finetuning configuration (the keys of ``workflows/finetune_csi300.yaml`` without ``data``,
            e.g. ``{preset: cpu, output_dir: runs/kronos}``): ``fit`` trains on the dataset's train and valid
            segments and predicts with the result. Stages whose checkpoints exist are skipped (skip_existing).
        lookback, pred_len: context bars per forecast and steps forecast; training windows use the same.
        sample_count, T, top_k, top_p, seed: sampling; each day is seeded from ``seed`` and its date.
        signal: one of :data:`kronos_qlib.signals.SIGNALS`; ``signal_horizon`` the scored step (default last).
        cache_dir: where sampled paths are kept (None: no cache).
    """

    def __init__(self, tokenizer: str = "NeoQuasar/Kronos-Tokenizer-base", predictor: str = "NeoQuasar/Kronos-small",
                 finetune: dict | None = None, lookback: int = 90, pred_len: int = 10, sample_count: int = 5,
                 T: float = 1.0, top_k: int = 0, top_p: float = 0.9, seed: int = 0, signal: str = "expected_return",
                 signal_horizon: int | None = None, max_context: int = 512, clip: float = 5.0, batch_size: int = 64,
                 device: str | None = None, cache_dir: str | None = "~/.cache/kronos_qlib/forecasts"):
        check_sampling_args(T, top_k, top_p, sample_count)
        if signal not in SIGNALS:
            raise ConfigError(f"unknown signal '{signal}' (known signals: {', '.join(SIGNALS)})")
        if finetune is not None and "data" in finetune:
            raise ConfigError("finetune.data is not used: KronosModel trains on the dataset's segments")
        if lookback < 2 or pred_len < 1:
            raise ConfigError(f"lookback must be >= 2 and pred_len >= 1, got {lookback} and {pred_len}")
        if signal_horizon is not None and not 1 <= signal_horizon <= pred_len:
            raise ConfigError(f"signal_horizon must lie in [1, pred_len={pred_len}], got {signal_horizon}")
        if signal == "mean_over_std" and sample_count < 2:
            raise ConfigError("the signal 'mean_over_std' needs sample_count >= 2 (a spread across paths)")
        self.tokenizer_source, self.predictor_source = tokenizer, predictor
        self.finetune = finetune
        self.lookback, self.pred_len = lookback, pred_len
        self.sampling = dict(T=T, top_k=top_k, top_p=top_p, sample_count=sample_count)
        self.seed = seed
        self.signal, self.signal_horizon = signal, signal_horizon
        self.max_context, self.clip, self.batch_size, self.device = max_context, clip, batch_size, device
        self.cache_dir = cache_dir
        self.tokenizer: KronosTokenizer | None = None
        self.model: Kronos | None = None

    # ------------------------------------------------------------------------------------------------- fit
    def fit(self, dataset: DatasetH, reweighter=None) -> None:
        if reweighter is not None:
            raise ConfigError("KronosModel does not support sample reweighting")
        if self.finetune is None:
            self._load(self.tokenizer_source, self.predictor_source)
            return
        config = config_from_dict(dict(self.finetune), where="KronosModel finetune")
        config.data.lookback, config.data.horizon, config.data.clip = self.lookback, self.pred_len, self.clip
        handler = self._handler(dataset)
        ranges = {s: self._segment(dataset, s) for s in ("train", "valid")}
        for split, (start, end) in ranges.items():
            check_split_length(split, start, end, self.pred_len)
        panel = BarPanel.from_frame(handler.bars(max(end for _, end in ranges.values())))
        datasets = split_datasets(panel, handler.universe, ranges, config.data.spec, handler.market)
        # resume=True: a finished stage with the same settings is reused, a killed one continues
        trainer = SequentialTrainer(config, datasets=datasets, resume=True)
        predictor = trainer.run().get("predictor") or config.pre_trained_predictor
        if not predictor:
            raise ConfigError("finetune trains no predictor (train_basemodel: false) and names none "
                              "(pre_trained_predictor)")
        self.tokenizer = trainer.tokenizer_for_predictor()
        self.model = Kronos.from_pretrained(str(predictor))

    def _load(self, tokenizer: str | Path, predictor: str | Path) -> None:
        self.tokenizer = KronosTokenizer.from_pretrained(str(tokenizer))
        self.model = Kronos.from_pretrained(str(predictor))

    # --------------------------------------------------------------------------------------------- predict
    def predict(self, dataset: DatasetH, segment: str | slice = "test") -> pd.Series:
        """Score of every universe member with ``lookback`` traded bars up to each trading day of ``segment``.

        The score at day t uses bars up to t's close only; Qlib's strategies trade on it from t + 1.
        """
        if self.model is None:
            raise ValueError("KronosModel is not fitted: call fit(dataset) first (it loads the checkpoints)")
        handler = self._handler(dataset)
        start, end = self._segment(dataset, segment)
        calendar = pd.DatetimeIndex(D.calendar())
        days = calendar[(calendar >= start) & (calendar <= end)]
        if len(days) == 0:
            raise KronosInputError(f"segment '{segment}' ({start.date()}..{end.date()}) has no trading days")
        panel = BarPanel.from_frame(handler.bars(end))
        requests = self._requests(panel, handler, days, segment)
        predictor = KronosPredictor(self.model, self.tokenizer, device=self.device, max_context=self.max_context,
                                    clip=self.clip, batch_size=self.batch_size)
        cache = ForecastCache(self.cache_dir, self._cache_key(handler, predictor))
        scores, sampled, reused = [], 0, 0
        for day in tqdm(sorted(requests), desc="Kronos forecasts", unit="day", dynamic_ncols=True):
            rows = requests[day]
            forecasts = cache.load(day)
            missing = [inst for inst in rows if inst not in forecasts]
            if missing:
                forecasts.update(self._forecast(predictor, panel, calendar, day, {i: rows[i] for i in missing}))
                cache.save(day, forecasts)
            sampled, reused = sampled + len(missing), reused + len(rows) - len(missing)
            names = sorted(rows)
            paths = np.stack([forecasts[n][0] for n in names]).astype(np.float64)
            last_close = np.array([forecasts[n][1] for n in names])
            values = compute_signal(self.signal, paths, last_close, self.signal_horizon)
            scores.append(pd.Series(values, index=pd.MultiIndex.from_product([[day], names],
                                                                             names=["datetime", "instrument"])))
        logger.info("KronosModel: %d forecasts on %d days (%d sampled, %d from the cache), signal %s",
                    sampled + reused, len(requests), sampled, reused, self.signal)
        return pd.concat(scores).rename("score").sort_index()

    def _requests(self, panel: BarPanel, handler: KronosBarsHandler, days: pd.DatetimeIndex,
                  segment) -> dict[pd.Timestamp, dict[str, int]]:
        """day -> {instrument: panel row of its bar that day} for members traded that day with enough history."""
        requests: dict[pd.Timestamp, dict[str, int]] = {}
        traded_any = False
        for i, inst in enumerate(panel.instruments):
            first, stop = int(panel.offsets[i]), int(panel.offsets[i + 1])
            dates = panel.dates[first:stop]
            for a, b in handler.universe.get(str(inst), []):
                member_days = days[(days >= a) & (days <= b)]
                pos = np.searchsorted(dates, member_days.values)
                traded = (pos < len(dates)) & (dates[np.minimum(pos, len(dates) - 1)] == member_days.values)
                traded_any |= bool(traded.any())
                enough = traded & (pos >= self.lookback - 1)
                for day, p in zip(member_days[enough], pos[enough]):
                    requests.setdefault(day, {})[str(inst)] = first + int(p)
        if not traded_any:
            raise KronosInputError(f"the universe '{handler.market}' has no data in segment '{segment}' "
                                   f"({days[0].date()}..{days[-1].date()})")
        if not requests:
            raise KronosInputError(
                f"no member of '{handler.market}' has {self.lookback} traded bars of history on any day of segment "
                f"'{segment}' ({days[0].date()}..{days[-1].date()}, {len(days)} trading days); the data starts "
                f"{pd.Timestamp(panel.dates.min()).date()}: start the handler earlier or lower lookback"
            )
        return requests

    def _forecast(self, predictor: KronosPredictor, panel: BarPanel, calendar: pd.DatetimeIndex, day: pd.Timestamp,
                  rows: dict[str, int]) -> dict[str, tuple[np.ndarray, float]]:
        names = sorted(rows)
        windows = np.stack([np.arange(rows[n] - self.lookback + 1, rows[n] + 1) for n in names])
        y_stamp = time_features(_future_days(calendar, day, self.pred_len))
        day_seed = (self.seed * 1_000_003 + int(day.strftime("%Y%m%d"))) % 2**63
        paths = predictor.predict_paths_from_arrays(panel.values[windows], panel.stamps[windows],
                                                    np.repeat(y_stamp[None], len(names), axis=0), seed=day_seed,
                                                    **self.sampling)
        last_close = panel.values[windows[:, -1], CLOSE]
        return {n: (p.astype(np.float32), float(c)) for n, p, c in zip(names, paths, last_close)}

    # ------------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _handler(dataset: DatasetH) -> KronosBarsHandler:
        handler = getattr(dataset, "handler", None)
        if not isinstance(handler, KronosBarsHandler):
            raise ConfigError("KronosModel needs a DatasetH whose handler is kronos_qlib.KronosBarsHandler "
                              f"(got {type(handler).__name__})")
        return handler

    @staticmethod
    def _segment(dataset: DatasetH, segment) -> tuple[pd.Timestamp, pd.Timestamp]:
        if isinstance(segment, slice):
            return pd.Timestamp(segment.start), pd.Timestamp(segment.stop)
        if segment not in dataset.segments:
            raise ConfigError(f"the dataset has no segment '{segment}' (it has {', '.join(dataset.segments)})")
        start, end = dataset.segments[segment]
        return pd.Timestamp(start), pd.Timestamp(end)

    def _cache_key(self, handler: KronosBarsHandler, predictor: KronosPredictor) -> dict:
        """Everything a day's paths depend on; batching and device change the random draws, so they count."""
        provider = Path(C.dpm.get_data_uri()).resolve()
        return {"tokenizer": weights_digest(self.tokenizer), "predictor": weights_digest(self.model),
                "batch_size": self.batch_size, "device": predictor.device.type,
                "lookback": self.lookback, "pred_len": self.pred_len, "seed": self.seed, **self.sampling,
                "max_context": self.max_context, "clip": self.clip, "provider": str(provider),
                "data": data_fingerprint(provider, handler.market), "market": handler.market, "version": 1}
