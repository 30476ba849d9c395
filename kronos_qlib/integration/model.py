"""KronosModel: the Qlib ``Model`` that finetunes (or loads) Kronos and scores stocks from sampled paths."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from qlib.config import C
from qlib.data import D
from qlib.data.dataset import DatasetH
from qlib.model.base import ModelFT

from ..data import BarPanel, check_split_length, head_samples, split_datasets
from ..errors import ConfigError, KronosInputError
from ..features import CLOSE, time_features
from ..inference import ForecastSpec, KronosPredictor, Sampling, default_device, series_key
from ..inference.head import score_contexts
from ..inference.precision import resolve_precision
from ..inference.predictor import NonFiniteForecast
from ..inference.spec import as_int
from ..logs import progress_bar
from ..model import Kronos, KronosTokenizer, ReturnHead
from ..model.configs import PRETRAINING_END, released
from ..model.hub import weights_digest
from ..signals import check_price_limit, check_signal, price_limits, score_day, smooth_scores
from ..signals.smoothing import check_halflife
from ..training import SequentialTrainer, config_from_dict
from ..training.config import network_revision
from ..training.head import HeadConfig, HeadStage
from ..inference.forecast_cache import ForecastCache, bars_digest
from .handler import KronosBarsHandler
from .recorder import active_recorder, log_settings, log_stage
from .score_cache import ScoreCache

logger = logging.getLogger(__name__)
#: Missing forecasts are sampled in chunks of whole days holding at least this many batches, and each day of a
#: chunk is saved once the chunk is done: large batches across days, and an interrupted run loses one chunk.
CHUNK_BATCHES = 4
#: The signal read from the return head instead of sampled paths.
HEAD_SIGNAL = "head"


@dataclasses.dataclass
class DayForecasts:
    """The forecasts of one day's universe members, in instrument order: their sampled paths (n, sample_count,
    pred_len, 6), the close each starts from and the ``lookback`` observed closes up to it (n, lookback)."""

    day: pd.Timestamp
    instruments: list[str]
    paths: np.ndarray
    last_close: np.ndarray
    history: np.ndarray


@dataclasses.dataclass
class _Plan:
    """What one predict or fill_cache call forecasts: day -> {instrument: panel row of its last bar}."""

    handler: KronosBarsHandler
    panel: BarPanel
    calendar: pd.DatetimeIndex
    requests: dict[pd.Timestamp, dict[str, int]]
    sampled: int = 0
    paths: int = 0  # paths scored
    floored: int = 0  # of which reached the close floor
    clipped: int = 0  # of which moved beyond the price limit on some day

    @property
    def total(self) -> int:
        return sum(map(len, self.requests.values()))


def _future_days(calendar: pd.DatetimeIndex, day: pd.Timestamp, n: int) -> pd.DatetimeIndex:
    """The n trading days after ``day``; past the calendar's end, weekdays stand in (only their time features
    are used)."""
    after = calendar[calendar > day][:n]
    if len(after) < n:
        extra = pd.bdate_range(max(day, calendar[-1]) + pd.offsets.BDay(), periods=n - len(after))
        after = after.append(extra)
    return after


class KronosModel(ModelFT):
    """Kronos as a Qlib model: ``fit`` finetunes or loads it, ``predict`` scores every member every day, and
    ``finetune`` (Qlib's ModelFT) continues training from the current weights, e.g. on a later period.

    Args:
        tokenizer, predictor: Hub ids or local folders, used when ``finetune`` is not given.
        revision: their Hub revision (None: the latest; ``released``: the commits of the released files; or one
            each, ``{tokenizer: ..., predictor: ...}``); ``finetune`` takes its own for its ``pre_trained_*``.
        finetune: a finetuning configuration (the keys of ``workflows/finetune_csi300.yaml`` but ``data`` and
            ``forecast``, e.g. ``{preset: cpu, output_dir: runs/kronos}``): ``fit`` trains on the dataset's train
            and valid segments, in windows of the model's ``forecast``, and predicts with the result. A finished
            stage with the same settings is reused, an interrupted one resumes.
        refit: what :meth:`finetune` changes in the ``finetune`` settings (default: the predictor stage only,
            ``train_tokenizer: false``), e.g. ``{output_dir: runs/refit, predictor_training: {epochs: 1,
            lr: 1e-5}}``; ``output_dir`` defaults to the ``finetune`` one with ``_refit`` appended.
        forecast: :class:`~kronos_qlib.inference.ForecastSpec` fields (lookback, pred_len, clip, max_context);
            training windows use the same.
        sampling: :class:`~kronos_qlib.inference.Sampling` fields (T, top_k, top_p, sample_count, seed). A
            series' paths depend on the seed, its day and instrument only, not on batching.
        signal: one of :data:`kronos_qlib.signals.SIGNALS`, scored over the path from step ``signal_start`` to
            step ``signal_end`` (default: from step 1, the first close a trade at t + 1 gets, to the last step).
            Each day's scores are winsorized at the 1st / 99th percentile. ``head``: the return head's score, one
            forward pass per stock-day, no paths sampled (see ``head``).
        head: with ``signal: head``, :class:`~kronos_qlib.training.head.HeadConfig` fields (variant probe | joint
            | control, horizon, hidden, loss, epochs, ...): ``fit`` trains the generative stages as ``finetune``
            says, then the head stage in ``<finetune output_dir>/head_<variant>_h<horizon>`` (reused when
            finished, resumed when killed); ``finetune`` trains the refit's head from the current one. For a head
            on checkpoints kept as they are, give ``finetune`` with ``train_tokenizer: false``, ``train_basemodel:
            false`` and the checkpoints as ``pre_trained_tokenizer`` / ``pre_trained_predictor``.
        signal_halflife: smooth each stock's daily score with an exponential average of this half-life in
            trading days (None: no smoothing); a persistent score trades less.
        price_limit: each sampled daily move is clipped to the market's daily limit before scoring: ``cn`` (China
            A-share limits by board), a fraction for every stock, or None (see :mod:`kronos_qlib.signals.price_limits`).
        batch_size: series per forward pass; it changes speed and memory, never the forecasts.
        device: where forecasting runs (default: CUDA, MPS or CPU, whichever is present).
        precision: ``auto`` (bf16 on a GPU that supports it, else fp32), ``fp32``, ``bf16`` or ``int8`` (CPU);
            see :mod:`kronos_qlib.inference.precision`. The forecast cache keys on the resolved precision.
        cache_dir: where sampled paths are kept (None: no cache); after ``fit``, ``forecast_folder`` is the
            folder ``predict`` reads and writes (see :mod:`kronos_qlib.inference.forecast_cache` for its
            layout), also in the model qrun records.

    Under qrun, the recorder's params name the weights: ``kronos.weights.*`` the digests of those predict uses,
    ``kronos.loaded.<network>.*`` the files they were loaded from (source, Hub commit, sha256) and
    ``kronos.start.<stage>.<network>.*`` what each finetuned stage started from (as its done.json says).
    """

    def __init__(self, tokenizer: str = "NeoQuasar/Kronos-Tokenizer-base", predictor: str = "NeoQuasar/Kronos-small",
                 finetune: dict | None = None, refit: dict | None = None,
                 forecast: dict | ForecastSpec | None = None,
                 sampling: dict | Sampling | None = None, signal: str = "expected_return", signal_start: int = 1,
                 signal_end: int | None = None, signal_halflife: float | None = None, head: dict | None = None,
                 price_limit: str | float | None = "cn", batch_size: int = 64, device: str | None = None,
                 precision: str = "auto", cache_dir: str | None = "~/.cache/kronos_qlib/forecasts",
                 revision: str | dict | None = None):
        self.forecast = ForecastSpec.build(forecast, "KronosModel forecast")
        self.sampling = Sampling.build(sampling, "KronosModel sampling")
        self.batch_size = as_int("batch_size", batch_size, 1)
        if signal == HEAD_SIGNAL:
            if finetune is None:
                raise ConfigError("signal: head trains a head on the dataset's segments, into finetune.output_dir: "
                                  "give finetune settings (train_tokenizer: false and train_basemodel: false keep "
                                  "the pre_trained_* checkpoints as they are)")
            self.head_config: HeadConfig | None = HeadConfig.build(head, "KronosModel head")
            self.signal_end = None
        else:
            if head is not None:
                raise ConfigError(f"head settings are read with signal: head only (signal is '{signal}')")
            self.head_config = None
            self.signal_end = check_signal(signal, self.forecast.pred_len, self.sampling.sample_count,
                                           signal_start, signal_end)
        for key, why in (("data", "KronosModel trains on the dataset's segments"),
                         ("forecast", "the training windows are the model's own forecast")):
            if any(settings is not None and key in settings for settings in (finetune, refit)):
                raise ConfigError(f"finetune.{key} is not used: {why}")
        self.tokenizer_source, self.predictor_source, self.revision = tokenizer, predictor, revision
        self.finetune_config, self.refit = finetune, refit
        self.signal, self.signal_start = signal, int(signal_start)
        self.signal_halflife, self.price_limit = check_halflife(signal_halflife), check_price_limit(price_limit)
        self.device, self.cache_dir = device, cache_dir
        self.precision = precision
        self._resolved_precision()  # checked here, resolved again where it runs (params.pkl may move machines)
        self.tokenizer: KronosTokenizer | None = None
        self.model: Kronos | None = None
        self.head: ReturnHead | None = None
        self.forecast_folder: Path | None = None

    # ------------------------------------------------------------------------------------------------- fit
    def fit(self, dataset: DatasetH, reweighter=None) -> None:
        if reweighter is not None:
            raise ConfigError("KronosModel does not support sample reweighting")
        handler = self._handler(dataset)
        if self.finetune_config is None:
            starts = released(self.tokenizer_source, self.predictor_source)
        else:
            config = config_from_dict(dict(self.finetune_config), where="KronosModel finetune")
            starts = released(config.pre_trained_tokenizer, config.pre_trained_predictor)
        if starts and "test" in dataset.segments and \
                self._segment(dataset, "test")[0] < pd.Timestamp(PRETRAINING_END):  # at start, before training
            logger.warning("the test segment starts %s, inside the pretraining data of %s (which runs to about %s): "
                           "its figures may credit the model with what it saw in pretraining",
                           self._segment(dataset, "test")[0].date(), " and ".join(starts), PRETRAINING_END)
        if self.finetune_config is None:
            self._load(self.tokenizer_source, self.predictor_source)
        else:
            self._train(dataset, handler, dict(self.finetune_config), "finetune")
        if self.head_config is not None:
            self._fit_head(dataset, handler, self.finetune_config["output_dir"], "finetune")
        recorder = active_recorder()
        if recorder is not None:  # the weights a recorded run used, whatever folder or Hub id they came from
            networks = {"tokenizer": self.tokenizer, "predictor": self.model,
                        **({"head": self.head} if self.head is not None else {})}
            log_settings(recorder, forecast=self.forecast.to_dict(), sampling=self.sampling.to_dict(),
                         weights={name: weights_digest(net) for name, net in networks.items()},
                         loaded={name: net.origin for name, net in networks.items()})
        # qrun pickles the model (params.pkl) right after fit, before predict: the recorded model names its cache
        self.forecast_folder = self._output_folder()

    def finetune(self, dataset: DatasetH, reweighter=None) -> None:
        """Continue training from the current weights on the dataset's train and valid segments, with the
        ``refit`` settings over the ``finetune`` ones, into a new output folder; predict then uses the result."""
        if self.model is None:
            raise ValueError("KronosModel is not fitted: call fit(dataset) before finetune(dataset)")
        if reweighter is not None:
            raise ConfigError("KronosModel does not support sample reweighting")
        values = {key: value for key, value in (self.finetune_config or {}).items() if key != "output_dir"}
        refit = {"train_tokenizer": False, **(self.refit or {})}
        if "output_dir" not in refit:
            if not self.finetune_config or "output_dir" not in self.finetune_config:
                raise ConfigError("finetune(dataset) needs refit.output_dir: the folder its training writes to")
            refit["output_dir"] = f"{Path(self.finetune_config['output_dir'])}_refit"
        start = Path(refit["output_dir"]).expanduser() / "start"  # the weights it continues from
        self.tokenizer.save_pretrained(start / "tokenizer")
        self.model.save_pretrained(start / "predictor")
        values.update(refit, pre_trained_tokenizer=str(start / "tokenizer"), tokenizer_config=None,
                      pre_trained_predictor=str(start / "predictor"), predictor_config=None)
        handler = self._handler(dataset)
        self._train(dataset, handler, values, "refit")
        if self.head_config is not None:
            self._fit_head(dataset, handler, refit["output_dir"], "refit", init_head=self.head)
        self.forecast_folder = self._output_folder()

    def _train(self, dataset: DatasetH, handler: KronosBarsHandler, values: dict, name: str) -> None:
        """Two-stage training on the dataset's segments with the settings ``values``; under qrun its curves,
        settings and checkpoints go to the recorder as ``<name>`` (see :mod:`.recorder`)."""
        spec = self.forecast
        config = config_from_dict({**values, "forecast": spec.to_dict()}, where=f"KronosModel {name}")
        ranges = {s: self._segment(dataset, s) for s in ("train", "valid")}
        for split, (start, end) in ranges.items():
            check_split_length(split, start, end, spec.pred_len)
        panel = BarPanel.from_frame(handler.bars(max(end for _, end in ranges.values())))
        datasets = split_datasets(panel, handler.universe, ranges, spec, handler.market)
        # resume=True: a finished stage with the same settings is reused, a killed one continues
        trainer = SequentialTrainer(config, datasets=datasets, resume=True)
        predictor = trainer.run().get("predictor") or config.pre_trained_predictor
        if not predictor:
            raise ConfigError("finetune trains no predictor (train_basemodel: false) and names none "
                              "(pre_trained_predictor)")
        self.tokenizer = trainer.tokenizer_for_predictor()
        self.model = Kronos.from_pretrained(str(predictor))
        recorder = active_recorder()
        if recorder is not None:
            log_settings(recorder, **{name: dataclasses.asdict(config)})
            for stage in ("tokenizer", "predictor"):
                log_stage(recorder, trainer.folder(stage), prefix="" if name == "finetune" else f"{name}-")

    def _fit_head(self, dataset: DatasetH, handler: KronosBarsHandler, output_dir: str, name: str,
                  init_head: ReturnHead | None = None) -> None:
        """The head stage on the train and valid segments' stock-days (every ``day_stride``-th day), after the
        generative stages; the predictor it reads replaces ``model`` (joint and control train their own)."""
        config, spec = self.head_config, self.forecast
        ranges = {s: self._segment(dataset, s) for s in ("train", "valid")}
        panel = BarPanel.from_frame(handler.bars(max(end for _, end in ranges.values())))
        samples = {s: head_samples(panel, spec.lookback, config.horizon, *ranges[s], handler.universe)
                   .every_kth_day(config.day_stride) for s in ranges}
        device = torch.device(self.device) if self.device is not None else default_device()
        stage = HeadStage(config, Path(output_dir).expanduser() / config.folder_name(), self.tokenizer, self.model,
                          panel, samples, spec.lookback, spec.clip, device, init_head)
        head, predictor = stage.run(resume=True)
        self.tokenizer, self.model, self.head = self.tokenizer.cpu(), predictor.cpu(), head.cpu()
        recorder = active_recorder()
        if recorder is not None:
            log_settings(recorder, **{f"{name}_head": dataclasses.asdict(config)})
            log_stage(recorder, stage.folder, prefix="" if name == "finetune" else f"{name}-")

    def _load(self, tokenizer: str | Path, predictor: str | Path) -> None:
        self.tokenizer = KronosTokenizer.from_pretrained(str(tokenizer),
                                                         revision=network_revision(self.revision, "tokenizer"))
        self.model = Kronos.from_pretrained(str(predictor), revision=network_revision(self.revision, "predictor"))

    # --------------------------------------------------------------------------------------------- predict
    def predict(self, dataset: DatasetH, segment: str | slice = "test") -> pd.Series:
        """Score of every universe member with ``lookback`` traded bars up to each trading day of ``segment``.

        The score at day t uses bars up to t's close only; Qlib's strategies trade on it from t + 1. Forecasts
        missing from the cache are sampled in large batches across days; each day is saved once it is done.
        """
        plan = self._plan(dataset, segment)
        if self.head is not None:
            return smooth_scores(self._head_scores(plan), self.signal_halflife)
        scores = [self._scores(day, plan) for day in self._days(plan)]
        logger.info("KronosModel: signal %s over steps %d..%d scored %d paths: %d had a daily move clipped at the "
                    "price limit (%s), %d a close floored", self.signal, self.signal_start, self.signal_end,
                    plan.paths, plan.clipped, self.price_limit, plan.floored)
        return smooth_scores(pd.concat(scores).rename("score").sort_index(), self.signal_halflife)

    def day_forecasts(self, dataset: DatasetH, segment: str | slice = "test", shard: tuple[int, int] = (0, 1)
                      ) -> Iterator[DayForecasts]:
        """What :meth:`predict` scores, day by day (every ``shard[1]``-th day from the ``shard[0]``-th, as in
        :meth:`fill_cache`): the members' paths (from the cache, or sampled into it) with their last closes and
        observed history, for scoring them in other ways (research/signals.py)."""
        yield from self._days(self._plan(dataset, segment, shard))

    def fill_cache(self, dataset: DatasetH, segment: str | slice = "test", shard: tuple[int, int] = (0, 1)
                   ) -> tuple[int, int]:
        """Sample into the forecast cache what ``predict(dataset, segment)`` needs, without scoring.

        ``shard=(i, n)`` takes every n-th trading day of the segment from the i-th (how ``scripts/forecast.py``
        splits the work across processes: no two shards write the same day, and draws do not depend on the
        split). Returns (forecasts sampled, forecasts already cached).
        """
        index, count = shard
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ConfigError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
        if self.cache_dir is None:
            raise ConfigError("fill_cache needs a forecast cache: cache_dir is None")
        plan = self._plan(dataset, segment, shard)
        for _ in self._forecasts(plan):
            pass
        return plan.sampled, plan.total - plan.sampled

    def _plan(self, dataset: DatasetH, segment: str | slice, shard: tuple[int, int] = (0, 1)) -> _Plan:
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
        requests = {day: requests[day] for i, day in enumerate(sorted(requests)) if i % shard[1] == shard[0]}
        return _Plan(handler, panel, calendar, requests)

    def _forecasts(self, plan: _Plan) -> Iterator[tuple[pd.Timestamp, dict[str, tuple[np.ndarray, float]]]]:
        """(day, instrument -> (paths, last close)) for every day of the plan: complete days from the cache
        first, then the missing forecasts sampled chunk by chunk, each day saved once its chunk is done."""
        cache = self._cache()
        self.forecast_folder = cache.folder
        partial, inputs = {}, {}
        for day in sorted(plan.requests):
            inputs[day] = self._inputs(plan, day)
            forecasts = cache.load(day, inputs[day])
            if forecasts.keys() >= plan.requests[day].keys():
                yield day, forecasts
            else:
                partial[day] = forecasts
        missing = {day: {inst: row for inst, row in plan.requests[day].items() if inst not in partial[day]}
                   for day in partial}
        plan.sampled = sum(map(len, missing.values()))
        if plan.sampled:
            predictor = KronosPredictor(self.model, self.tokenizer, device=self.device,
                                        max_context=self.forecast.max_context, clip=self.forecast.clip,
                                        batch_size=self.batch_size, precision=self.precision)
            with progress_bar(total=plan.sampled, desc="Kronos forecasts", unit="series") as bar:
                for chunk in self._chunks(missing):
                    sampled = self._forecast(predictor, plan.panel, plan.calendar, {day: missing[day] for day in chunk})
                    for day in chunk:
                        yield day, cache.save(day, sampled[day], inputs[day])
                        bar.update(len(missing[day]))
        logger.info("KronosModel: %d forecasts on %d days (%d sampled, %d from the cache in %s)",
                    plan.total, len(plan.requests), plan.sampled, plan.total - plan.sampled, self.forecast_folder)

    def _inputs(self, plan: _Plan, day: pd.Timestamp) -> dict[str, str]:
        """instrument -> digest of the context bars its forecast of ``day`` reads (the cache checks it)."""
        lookback = self.forecast.lookback
        future = time_features(_future_days(plan.calendar, day, self.forecast.pred_len))
        return {inst: bars_digest(plan.panel.values[row + 1 - lookback:row + 1],
                                  plan.panel.stamps[row + 1 - lookback:row + 1], future)
                for inst, row in plan.requests[day].items()}

    def _chunks(self, missing: dict[pd.Timestamp, dict[str, int]]) -> Iterator[list[pd.Timestamp]]:
        """Consecutive days holding at least CHUNK_BATCHES batches of missing forecasts (the last may hold less)."""
        chunk, size = [], 0
        for day, rows in missing.items():
            chunk.append(day)
            size += len(rows)
            if size >= CHUNK_BATCHES * self.batch_size:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk

    def _days(self, plan: _Plan) -> Iterator[DayForecasts]:
        lookback = self.forecast.lookback
        for day, forecasts in self._forecasts(plan):
            rows = plan.requests[day]
            names = sorted(rows)
            paths = np.stack([forecasts[n][0] for n in names]).astype(np.float64)
            broken = [name for name, p in zip(names, paths) if not np.isfinite(p[..., CLOSE]).all()]
            if broken:
                raise KronosInputError(f"the forecasts of {day.date()} in {self.forecast_folder} hold non-finite "
                                       f"closes for {', '.join(broken[:5])}: delete that day's file to sample it again")
            contexts = np.array([rows[n] for n in names])[:, None] + np.arange(1 - lookback, 1)
            yield DayForecasts(day, names, paths, np.array([forecasts[n][1] for n in names]),
                               plan.panel.values[contexts, CLOSE])

    def _scores(self, day: DayForecasts, plan: _Plan) -> pd.Series:
        """The day's signal, winsorized; counts the paths the floor and the price limit changed into ``plan``."""
        values, window = score_day(self.signal, day.paths, day.last_close, self.signal_start, self.signal_end,
                                   day.history, price_limits(day.instruments, self.price_limit))
        plan.paths += day.paths.shape[0] * day.paths.shape[1]
        plan.floored, plan.clipped = plan.floored + window.floored, plan.clipped + window.clipped
        return pd.Series(values, index=pd.MultiIndex.from_product([[day.day], day.instruments],
                                                                  names=["datetime", "instrument"]))

    def _head_scores(self, plan: _Plan) -> pd.Series:
        """The head's score of every planned stock-day: cached ones read, the rest in one batched fp32 pass and
        saved day by day."""
        cache = self._score_cache()
        self.forecast_folder = cache.folder
        inputs = {day: self._inputs(plan, day) for day in sorted(plan.requests)}
        scores = {day: cache.load(day, inputs[day]) for day in inputs}
        missing = [(day, inst, row) for day in inputs for inst, row in plan.requests[day].items()
                   if inst not in scores[day]]
        if missing:
            lookback = self.forecast.lookback
            device = torch.device(self.device) if self.device is not None else default_device()
            values = score_contexts(self.tokenizer, self.model, self.head, plan.panel,
                                    np.array([row + 1 - lookback for _, _, row in missing]), lookback,
                                    self.forecast.clip, self.batch_size, device)
            for (day, inst, _), value in zip(missing, values):
                scores[day][inst] = float(value)
            for day in dict.fromkeys(day for day, _, _ in missing):
                cache.save(day, scores[day], inputs[day])
        logger.info("KronosModel: head scores of %d stock-days on %d days (%d computed, %d from %s)", plan.total,
                    len(inputs), len(missing), plan.total - len(missing), cache.folder)
        index = pd.MultiIndex.from_tuples([(day, inst) for day in inputs for inst in sorted(scores[day])],
                                          names=["datetime", "instrument"])
        return pd.Series([scores[day][inst] for day in inputs for inst in sorted(scores[day])], index=index,
                         name="score").sort_index()

    def _requests(self, panel: BarPanel, handler: KronosBarsHandler, days: pd.DatetimeIndex,
                  segment) -> dict[pd.Timestamp, dict[str, int]]:
        """day -> {instrument: panel row of its bar that day} for members traded that day with enough history."""
        lookback = self.forecast.lookback
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
                enough = traded & (pos >= lookback - 1)
                for day, p in zip(member_days[enough], pos[enough]):
                    requests.setdefault(day, {})[str(inst)] = first + int(p)
        if not traded_any:
            raise KronosInputError(f"the universe '{handler.market}' has no data in segment '{segment}' "
                                   f"({days[0].date()}..{days[-1].date()})")
        if not requests:
            raise KronosInputError(
                f"no member of '{handler.market}' has {lookback} traded bars of history on any day of segment "
                f"'{segment}' ({days[0].date()}..{days[-1].date()}, {len(days)} trading days); the data starts "
                f"{pd.Timestamp(panel.dates.min()).date()}: start the handler earlier or lower lookback"
            )
        return requests

    def _forecast(self, predictor: KronosPredictor, panel: BarPanel, calendar: pd.DatetimeIndex,
                  rows: dict[pd.Timestamp, dict[str, int]]) -> dict[pd.Timestamp, dict[str, tuple[np.ndarray, float]]]:
        """Sample the given (day, instrument) forecasts in one call; each draws from its own (seed, day,
        instrument) key, so neither the chunk nor the batch it lands in changes it."""
        spec = self.forecast
        series = [(day, inst) for day in rows for inst in sorted(rows[day])]
        ends = np.array([rows[day][inst] for day, inst in series])
        windows = ends[:, None] + np.arange(1 - spec.lookback, 1)
        y_stamps = {day: time_features(_future_days(calendar, day, spec.pred_len)) for day in rows}
        keys = np.array([series_key(self.sampling.seed, f"{day:%Y-%m-%d}", inst) for day, inst in series])
        try:
            paths = predictor.predict_paths_from_arrays(panel.values[windows], panel.stamps[windows],
                                                        np.stack([y_stamps[day] for day, _ in series]),
                                                        self.sampling, keys=keys)
        except NonFiniteForecast as err:
            day, inst = series[err.series]
            raise KronosInputError(f"{inst} on {day.date()}: {err}") from err
        out: dict[pd.Timestamp, dict[str, tuple[np.ndarray, float]]] = {day: {} for day in rows}
        for (day, inst), p, close in zip(series, paths, panel.values[ends, CLOSE]):
            out[day][inst] = (p.astype(np.float32), float(close))
        return out

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

    def _resolved_precision(self) -> str:
        device = torch.device(self.device) if self.device is not None else default_device()
        return resolve_precision(self.precision, device)

    def _output_folder(self) -> Path | None:
        """Where predict reads and writes: head scores with the head signal, sampled paths otherwise."""
        return (self._score_cache() if self.head is not None else self._cache()).folder

    def _score_cache(self) -> ScoreCache:
        """The head scores' cache, keyed by the three networks, the context settings and the provider folder."""
        return ScoreCache(self.cache_dir, {
            "tokenizer": weights_digest(self.tokenizer), "predictor": weights_digest(self.model),
            "head": weights_digest(self.head), "lookback": self.forecast.lookback, "clip": self.forecast.clip,
            "provider": str(Path(C.dpm.get_data_uri()).resolve())})

    def _cache(self) -> ForecastCache:
        """The cache keyed by the model, the settings a day's paths depend on (not batch_size or device, which
        change no draw) and the provider folder (scripts read the realized prices from it); the bars each
        forecast reads are checked per forecast (see ForecastCache), so a provider that gained days or changed
        some bars keeps every other forecast."""
        return ForecastCache(self.cache_dir, {
            "tokenizer": weights_digest(self.tokenizer), "predictor": weights_digest(self.model),
            "forecast": self.forecast.to_dict(), "sampling": self.sampling.to_dict(),
            "precision": self._resolved_precision(), "provider": str(Path(C.dpm.get_data_uri()).resolve())})
