"""KronosModel: the Qlib ``Model`` that finetunes (or loads) Kronos and scores stocks with it."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch
from qlib.config import C
from qlib.data import D
from qlib.data.dataset import DatasetH
from qlib.model.base import ModelFT

from ..data import BarPanel, check_split_length, head_samples, split_datasets
from ..errors import ConfigError, KronosInputError
from ..inference import ForecastSpec, Sampling, default_device
from ..inference.forecast_cache import ForecastCache
from ..inference.precision import resolve_precision
from ..inference.spec import as_int
from ..model import Kronos, KronosTokenizer, ReturnHead
from ..model.configs import PRETRAINING_END, released
from ..model.hub import weights_digest
from ..signals import check_price_limit, check_signal, smooth_scores
from ..signals.smoothing import check_halflife
from ..training import SequentialTrainer, config_from_dict
from ..training.config import network_revision
from ..training.head import HeadConfig, HeadStage
from .daily_forecasts import DayForecasts, PathForecasts, Plan, head_scores, path_scores
from .handler import KronosBarsHandler
from .recorder import active_recorder, log_settings, log_stage
from .score_cache import ScoreCache

logger = logging.getLogger(__name__)
#: The signal read from the return head instead of sampled paths.
HEAD_SIGNAL = "head"


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
        stage = HeadStage(config, Path(output_dir).expanduser() / config.folder_name(), self.tokenizer, self.model,
                          panel, samples, spec.lookback, spec.clip, self._device(), init_head)
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
            cache = self._score_cache()
            self.forecast_folder = cache.folder
            scores = head_scores(plan, self.tokenizer, self.model, self.head, cache, self.batch_size, self._device())
        else:
            scores = path_scores(self._paths(plan).days(), self.signal, self.signal_start, self.signal_end,
                                 self.price_limit)
        return smooth_scores(scores, self.signal_halflife)

    def day_forecasts(self, dataset: DatasetH, segment: str | slice = "test", shard: tuple[int, int] = (0, 1)
                      ) -> Iterator[DayForecasts]:
        """What :meth:`predict` scores, day by day (every ``shard[1]``-th day from the ``shard[0]``-th, as in
        :meth:`fill_cache`): the members' paths (from the cache, or sampled into it) with their last closes and
        observed history, for scoring them in other ways (research/signals.py)."""
        yield from self._paths(self._plan(dataset, segment, shard)).days()

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
        sampled = self._paths(plan).fill()
        return sampled, plan.total - sampled

    def _plan(self, dataset: DatasetH, segment: str | slice, shard: tuple[int, int] = (0, 1)) -> Plan:
        if self.model is None:
            raise ValueError("KronosModel is not fitted: call fit(dataset) first (it loads the checkpoints)")
        handler = self._handler(dataset)
        start, end = self._segment(dataset, segment)
        calendar = pd.DatetimeIndex(D.calendar())
        days = calendar[(calendar >= start) & (calendar <= end)]
        if len(days) == 0:
            raise KronosInputError(f"segment '{segment}' ({start.date()}..{end.date()}) has no trading days")
        return Plan.build(BarPanel.from_frame(handler.bars(end)), handler.universe, handler.market, calendar, days,
                          self.forecast, segment, shard)

    def _paths(self, plan: Plan) -> PathForecasts:
        cache = self._cache()
        self.forecast_folder = cache.folder
        return PathForecasts(plan, self.tokenizer, self.model, self.sampling, cache, self.batch_size, self.device,
                             self.precision)

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

    def _device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else default_device()

    def _resolved_precision(self) -> str:
        return resolve_precision(self.precision, self._device())

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
