"""A segment's forecasts and scores day by day, behind their caches: which (day, member) forecasts a segment asks
for, sampling what the forecast cache lacks in large batches across days, and each day's scores from the sampled
paths or from the return head. :class:`~kronos_qlib.integration.model.KronosModel` reads Qlib (calendar, handler,
provider) and hands the rest here; nothing in this module reads Qlib.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from ..data import BarPanel
from ..errors import KronosInputError
from ..features import CLOSE, time_features
from ..inference import ForecastSpec, KronosPredictor, Sampling, series_key
from ..inference.forecast_cache import ForecastCache, bars_digest
from ..inference.head import score_contexts
from ..inference.predictor import NonFiniteForecast
from ..logs import progress_bar
from ..model import Kronos, KronosTokenizer, ReturnHead
from ..signals import price_limits, score_day
from .score_cache import ScoreCache

logger = logging.getLogger(__name__)
#: Missing forecasts are sampled in chunks of whole days holding at least this many batches, and each day of a
#: chunk is saved once the chunk is done: large batches across days, and an interrupted run loses one chunk.
CHUNK_BATCHES = 4
#: instrument -> (sampled paths (sample_count, pred_len, 6), the close they start from)
Forecasts = dict[str, tuple[np.ndarray, float]]
#: day -> {instrument: panel row of its bar that day}
Rows = dict[pd.Timestamp, dict[str, int]]


@dataclasses.dataclass
class DayForecasts:
    """The forecasts of one day's universe members, in instrument order: their sampled paths (n, sample_count,
    pred_len, 6), the close each starts from and the ``lookback`` observed closes up to it (n, lookback)."""

    day: pd.Timestamp
    instruments: list[str]
    paths: np.ndarray
    last_close: np.ndarray
    history: np.ndarray


def future_days(calendar: pd.DatetimeIndex, day: pd.Timestamp, n: int) -> pd.DatetimeIndex:
    """The n trading days after ``day``; past the calendar's end, weekdays stand in (only their time features
    are used)."""
    after = calendar[calendar > day][:n]
    if len(after) < n:
        extra = pd.bdate_range(max(day, calendar[-1]) + pd.offsets.BDay(), periods=n - len(after))
        after = after.append(extra)
    return after


@dataclasses.dataclass
class Plan:
    """What one predict or fill_cache call forecasts: the panel's rows of each day's members (``requests``)."""

    panel: BarPanel
    calendar: pd.DatetimeIndex
    spec: ForecastSpec
    requests: Rows

    @classmethod
    def build(cls, panel: BarPanel, universe: dict[str, list], market: str, calendar: pd.DatetimeIndex,
              days: pd.DatetimeIndex, spec: ForecastSpec, segment: str | slice, shard: tuple[int, int] = (0, 1)
              ) -> Plan:
        """Every member of ``universe`` (instrument -> [(first day, last day)]) traded on a day of ``days`` with
        ``lookback`` traded bars up to it; every ``shard[1]``-th of those days from the ``shard[0]``-th."""
        lookback = spec.lookback
        requests: Rows = {}
        traded_any = False
        for i, inst in enumerate(panel.instruments):
            first, stop = int(panel.offsets[i]), int(panel.offsets[i + 1])
            dates = panel.dates[first:stop]
            for a, b in universe.get(str(inst), []):
                member_days = days[(days >= a) & (days <= b)]
                pos = np.searchsorted(dates, member_days.values)
                traded = (pos < len(dates)) & (dates[np.minimum(pos, len(dates) - 1)] == member_days.values)
                traded_any |= bool(traded.any())
                enough = traded & (pos >= lookback - 1)
                for day, p in zip(member_days[enough], pos[enough]):
                    requests.setdefault(day, {})[str(inst)] = first + int(p)
        if not traded_any:
            raise KronosInputError(f"the universe '{market}' has no data in segment '{segment}' "
                                   f"({days[0].date()}..{days[-1].date()})")
        if not requests:
            raise KronosInputError(
                f"no member of '{market}' has {lookback} traded bars of history on any day of segment "
                f"'{segment}' ({days[0].date()}..{days[-1].date()}, {len(days)} trading days); the data starts "
                f"{pd.Timestamp(panel.dates.min()).date()}: start the handler earlier or lower lookback"
            )
        kept = {day: requests[day] for i, day in enumerate(sorted(requests)) if i % shard[1] == shard[0]}
        return cls(panel, calendar, spec, kept)

    @property
    def total(self) -> int:
        return sum(map(len, self.requests.values()))

    def inputs(self, day: pd.Timestamp) -> dict[str, str]:
        """instrument -> digest of the context bars its forecast of ``day`` reads (the caches check it)."""
        lookback = self.spec.lookback
        future = time_features(future_days(self.calendar, day, self.spec.pred_len))
        return {inst: bars_digest(self.panel.values[row + 1 - lookback:row + 1],
                                  self.panel.stamps[row + 1 - lookback:row + 1], future)
                for inst, row in self.requests[day].items()}


class PathForecasts:
    """The sampled paths of a plan's forecasts: read from the forecast cache, or sampled into it."""

    def __init__(self, plan: Plan, tokenizer: KronosTokenizer, model: Kronos, sampling: Sampling,
                 cache: ForecastCache, batch_size: int, device: str | None, precision: str):
        self.plan, self.tokenizer, self.model, self.sampling, self.cache = plan, tokenizer, model, sampling, cache
        self.batch_size, self.device, self.precision = batch_size, device, precision

    @functools.cached_property
    def predictor(self) -> KronosPredictor:
        """Built on first use: a fully cached plan needs none (int8 quantizes the model when it is built)."""
        spec = self.plan.spec
        return KronosPredictor(self.model, self.tokenizer, device=self.device, max_context=spec.max_context,
                               clip=spec.clip, batch_size=self.batch_size, precision=self.precision)

    def days(self) -> Iterator[DayForecasts]:
        """Every planned day's forecasts: complete days from the cache first, then the missing forecasts sampled
        chunk by chunk, each day saved once its chunk is done."""
        missing, inputs = {}, {}
        for day in sorted(self.plan.requests):
            cached, missing_rows, inputs[day] = self._cached(day)
            if missing_rows:
                missing[day] = missing_rows
            else:
                yield self._day(day, cached)
        for chunk in self._chunks(missing):
            for day, forecasts in self._sample_into_cache(chunk, inputs).items():
                yield self._day(day, forecasts)
        self._log(missing)

    def fill(self) -> int:
        """Sample into the cache what the plan lacks, without reading it back; returns the forecasts sampled."""
        missing, inputs = {}, {}
        for day in sorted(self.plan.requests):
            _, missing_rows, inputs[day] = self._cached(day)
            if missing_rows:
                missing[day] = missing_rows
        for chunk in self._chunks(missing):
            self._sample_into_cache(chunk, inputs)
        self._log(missing)
        return sum(map(len, missing.values()))

    def _cached(self, day: pd.Timestamp) -> tuple[Forecasts, dict[str, int], dict[str, str]]:
        """The day's forecasts the cache holds, the planned rows it lacks and the digests of every planned
        forecast's bars."""
        inputs = self.plan.inputs(day)
        cached = self.cache.load(day, inputs)
        return cached, {inst: row for inst, row in self.plan.requests[day].items() if inst not in cached}, inputs

    def sample(self, rows: Rows) -> dict[pd.Timestamp, Forecasts]:
        """Sample the given (day, instrument) forecasts in one call, without the cache; each draws from its own
        (seed, day, instrument) key, so neither the call nor the batch it lands in changes it."""
        plan, spec = self.plan, self.plan.spec
        series = [(day, inst) for day in rows for inst in sorted(rows[day])]
        ends = np.array([rows[day][inst] for day, inst in series])
        windows = ends[:, None] + np.arange(1 - spec.lookback, 1)
        y_stamps = {day: time_features(future_days(plan.calendar, day, spec.pred_len)) for day in rows}
        keys = np.array([series_key(self.sampling.seed, f"{day:%Y-%m-%d}", inst) for day, inst in series])
        try:
            paths = self.predictor.predict_paths_from_arrays(plan.panel.values[windows], plan.panel.stamps[windows],
                                                        np.stack([y_stamps[day] for day, _ in series]),
                                                        self.sampling, keys=keys)
        except NonFiniteForecast as err:
            day, inst = series[err.series]
            raise KronosInputError(f"{inst} on {day.date()}: {err}") from err
        out: dict[pd.Timestamp, Forecasts] = {day: {} for day in rows}
        for (day, inst), p, close in zip(series, paths, plan.panel.values[ends, CLOSE]):
            out[day][inst] = (p.astype(np.float32), float(close))
        return out

    def _sample_into_cache(self, rows: Rows, inputs: dict[pd.Timestamp, dict[str, str]]
                           ) -> dict[pd.Timestamp, Forecasts]:
        """Sample ``rows`` and save each day with its bars' digests ``inputs``; returns each day's forecasts as
        its day file now holds them."""
        sampled = self.sample(rows)
        return {day: self.cache.save(day, sampled[day], inputs[day]) for day in rows}

    def _chunks(self, missing: Rows) -> Iterator[Rows]:
        """Consecutive days holding at least CHUNK_BATCHES batches of missing forecasts (the last may hold less),
        with a progress bar that advances as each chunk is consumed."""
        if not missing:
            return
        with progress_bar(total=sum(map(len, missing.values())), desc="Kronos forecasts", unit="series") as bar:
            chunk: Rows = {}
            size = 0
            for i, (day, rows) in enumerate(missing.items()):
                chunk[day] = rows
                size += len(rows)
                if size >= CHUNK_BATCHES * self.batch_size or i == len(missing) - 1:
                    yield chunk
                    bar.update(size)
                    chunk, size = {}, 0

    def _day(self, day: pd.Timestamp, forecasts: Forecasts) -> DayForecasts:
        plan = self.plan
        rows = plan.requests[day]
        names = sorted(rows)
        paths = np.stack([forecasts[n][0] for n in names]).astype(np.float64)
        broken = [name for name, p in zip(names, paths) if not np.isfinite(p[..., CLOSE]).all()]
        if broken:
            raise KronosInputError(f"the forecasts of {day.date()} in {self.cache.folder} hold non-finite "
                                   f"closes for {', '.join(broken[:5])}: delete that day's file to sample it again")
        contexts = np.array([rows[n] for n in names])[:, None] + np.arange(1 - plan.spec.lookback, 1)
        return DayForecasts(day, names, paths, np.array([forecasts[n][1] for n in names]),
                            plan.panel.values[contexts, CLOSE])

    def _log(self, missing: Rows) -> None:
        plan, sampled = self.plan, sum(map(len, missing.values()))
        logger.info("KronosModel: %d forecasts on %d days (%d sampled, %d from the cache in %s)",
                    plan.total, len(plan.requests), sampled, plan.total - sampled, self.cache.folder)


def path_scores(days: Iterable[DayForecasts], signal: str, start: int, end: int, price_limit: str | float | None
                ) -> pd.Series:
    """Each day's ``signal`` over path steps ``start``..``end``, winsorized, (datetime, instrument)-indexed; logs
    how many paths the close floor and the price limit changed."""
    scores, paths, floored, clipped = [], 0, 0, 0
    for day in days:
        values, window = score_day(signal, day.paths, day.last_close, start, end, day.history,
                                   price_limits(day.instruments, price_limit))
        paths += day.paths.shape[0] * day.paths.shape[1]
        floored, clipped = floored + window.floored, clipped + window.clipped
        scores.append(pd.Series(values, index=pd.MultiIndex.from_product([[day.day], day.instruments],
                                                                         names=["datetime", "instrument"])))
    logger.info("KronosModel: signal %s over steps %d..%d scored %d paths: %d had a daily move clipped at the "
                "price limit (%s), %d a close floored", signal, start, end, paths, clipped, price_limit, floored)
    return pd.concat(scores).rename("score").sort_index()


def head_scores(plan: Plan, tokenizer: KronosTokenizer, model: Kronos, head: ReturnHead, cache: ScoreCache,
                batch_size: int, device: torch.device) -> pd.Series:
    """The head's score of every planned stock-day: cached ones read, the rest in one batched fp32 pass and
    saved day by day."""
    lookback = plan.spec.lookback
    inputs = {day: plan.inputs(day) for day in sorted(plan.requests)}
    scores = {day: cache.load(day, inputs[day]) for day in inputs}
    missing = [(day, inst, row) for day in inputs for inst, row in plan.requests[day].items()
               if inst not in scores[day]]
    if missing:
        values = score_contexts(tokenizer, model, head, plan.panel,
                                np.array([row + 1 - lookback for _, _, row in missing]), lookback,
                                plan.spec.clip, batch_size, device)
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
