"""KronosPredictor: K-line history in, forecast paths out, in price units."""
from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import KronosInputError
from ..features import (BAR_COLUMNS, as_datetimes, check_finite, complete_bars, denormalize, normalize,
                        time_features)
from ..logs import progress_bar
from ..model import Kronos, KronosTokenizer
from .generate import sample_paths
from .precision import autocast, quantize_linear_layers, resolve_precision
from .sampling import series_key
from .spec import ForecastSpec, Sampling, as_int


def default_device() -> torch.device:
    """The fastest device present: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class _Series:
    """One series made ready for the model: normalized context, time features, the statistics to undo and
    the key its random draws come from."""
    x: np.ndarray
    x_stamp: np.ndarray
    y_stamp: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    key: int


class NonFiniteForecast(KronosInputError):
    """A forecast that holds NaN or inf; ``series`` is its position in the call, for callers that know its name."""

    def __init__(self, message: str, series: int):
        super().__init__(message)
        self.series = series


def check_forecast(paths: np.ndarray, series: int) -> None:
    """One series' paths (sample_count, pred_len, 6) must be finite: bars near the float limit (a volume of
    1e300) overflow the normalization's statistics and come back as -inf."""
    bad = ~np.isfinite(paths)
    if bad.any():
        path, step, column = (int(i) for i in np.argwhere(bad)[0])
        raise NonFiniteForecast(f"the forecast of series {series} holds a non-finite value "
                                f"({paths[path, step, column]}) in column '{BAR_COLUMNS[column]}' at step {step + 1} "
                                f"of path {path}: its context bars are too large for the normalization (check that "
                                f"column's units)", series)


class KronosPredictor:
    """Forecasts K-line series with a tokenizer + predictor pair.

    Each series is normalized with the mean and population std of its own context, (x - mean) / (std + 1e-5),
    clipped to +-clip; forecasts are sampled in that space and mapped back to prices. Columns are
    open, high, low, close, volume, amount (see :func:`kronos_qlib.features.complete_bars` for the fill rules).

    A series' paths depend on the weights, the settings and its key only: without explicit keys, the key is a
    hash of the seed and the series' own normalized bars and time stamps, so neither its position in the list
    nor ``batch_size`` changes them.

    Args:
        batch_size: series per forward pass (each with ``sample_count`` paths); bounds memory.
        precision: ``auto`` (bf16 on a CUDA GPU that supports it, else fp32), ``fp32``, ``bf16`` or ``int8``
            (CPU only); see :mod:`kronos_qlib.inference.precision`. Anything but fp32 changes the forecasts a
            little; :attr:`precision` is the resolved one.
    """

    columns = BAR_COLUMNS

    def __init__(self, model: Kronos, tokenizer: KronosTokenizer, device: str | torch.device | None = None,
                 max_context: int = 512, clip: float = 5, batch_size: int = 64, precision: str = "auto"):
        # checked as in every ForecastSpec; lookback and pred_len come with each call (see _spec)
        limits = ForecastSpec(pred_len=1, clip=clip, max_context=max_context)
        self.max_context, self.clip = limits.max_context, limits.clip
        self.batch_size = as_int("batch_size", batch_size, 1)
        self.device = torch.device(device) if device is not None else default_device()
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer.to(self.device).eval()
        if self.precision == "int8":  # quantized copies: the caller's networks stay float
            self.model, self.tokenizer = quantize_linear_layers(self.model), quantize_linear_layers(self.tokenizer)

    # ----------------------------------------------------------------------------------------------- public API
    # predict and predict_batch keep the original KronosPredictor's keywords and defaults (T 1.0, top_p 0.9, one
    # path, a fresh seed per call) so that code written for it runs unchanged; predict_paths takes a Sampling.
    def predict(self, df: pd.DataFrame, x_timestamp, y_timestamp, pred_len: int, T: float = 1.0, top_k: int = 0,
                top_p: float = 0.9, sample_count: int = 1, seed: int | None = None, use_cache: bool = True,
                verbose: bool = False) -> pd.DataFrame:
        """The mean forecast path of one series, indexed by ``y_timestamp``."""
        return self.predict_batch([df], [x_timestamp], [y_timestamp], pred_len, T=T, top_k=top_k, top_p=top_p,
                                  sample_count=sample_count, seed=seed, use_cache=use_cache, verbose=verbose)[0]

    def predict_batch(self, df_list: list[pd.DataFrame], x_timestamp_list: list, y_timestamp_list: list,
                      pred_len: int, T: float = 1.0, top_k: int = 0, top_p: float = 0.9, sample_count: int = 1,
                      seed: int | None = None, use_cache: bool = True, verbose: bool = False
                      ) -> list[pd.DataFrame]:
        """Mean forecast paths of many series; their histories may differ in length. ``seed=None`` draws a
        fresh seed, as the original does."""
        sampling = Sampling(T=T, top_k=top_k, top_p=top_p, sample_count=sample_count,
                            seed=secrets.randbelow(2 ** 63) if seed is None else seed)
        paths = self.predict_paths(df_list, x_timestamp_list, y_timestamp_list, pred_len, sampling, use_cache,
                                   verbose)
        return [pd.DataFrame(p.mean(axis=0), columns=list(self.columns), index=pd.DatetimeIndex(y_ts))
                for p, y_ts in zip(paths, y_timestamp_list)]

    def predict_paths(self, df_list: list[pd.DataFrame], x_timestamp_list: list, y_timestamp_list: list,
                      pred_len: int, sampling: Sampling = Sampling(), use_cache: bool = True,
                      verbose: bool = False) -> np.ndarray:
        """Every sampled path in price units: an array (n_series, sampling.sample_count, pred_len, 6).

        The last axis follows :attr:`columns`. The same ``sampling`` (its seed included) gives the same paths for
        the same series.
        """
        if not isinstance(sampling, Sampling):
            raise KronosInputError(f"sampling must be a kronos_qlib.Sampling, got {sampling!r}")
        pred_len = self._spec(2, pred_len).pred_len
        series = self._prepare(df_list, x_timestamp_list, y_timestamp_list, pred_len, sampling.seed)
        return self._sample(series, pred_len, sampling, use_cache, verbose)

    def predict_paths_from_arrays(self, bars: np.ndarray, x_stamp: np.ndarray, y_stamp: np.ndarray,
                                  sampling: Sampling, keys: np.ndarray | None = None, use_cache: bool = True,
                                  verbose: bool = False) -> np.ndarray:
        """:meth:`predict_paths` for callers that already hold arrays, e.g. a panel of daily bars.

        Args:
            bars: (n_series, n_context, 6) raw bars in the order of :attr:`columns`.
            x_stamp, y_stamp: (n_series, n_context, 5) and (n_series, pred_len, 5) time features
                (:func:`kronos_qlib.features.time_features`).
            keys: (n_series,) integers in [0, 2**63) that pick each series' draws (e.g.
                :func:`~kronos_qlib.inference.sampling.series_key` of the seed, date and instrument); by default
                a hash of ``sampling.seed`` and the series' normalized bars and stamps.
        """
        bars = np.asarray(bars, dtype=np.float64)
        x_stamp, y_stamp = np.asarray(x_stamp, dtype=np.float32), np.asarray(y_stamp, dtype=np.float32)
        if bars.ndim != 3 or bars.shape[-1] != len(self.columns) or bars.shape[1] < 2:
            raise KronosInputError(f"bars must have shape (n_series, n_context >= 2, {len(self.columns)}), "
                                   f"got {bars.shape}")
        if x_stamp.shape != (*bars.shape[:2], 5) or y_stamp.ndim != 3 or y_stamp.shape[0] != len(bars) \
                or y_stamp.shape[1] < 1 or y_stamp.shape[2] != 5:
            raise KronosInputError(f"time features must be (n_series, n_context, 5) and (n_series, pred_len >= 1, 5)"
                                   f" for bars {bars.shape}, got {x_stamp.shape} and {y_stamp.shape}")
        if keys is not None:
            keys = np.asarray(keys)
            if keys.shape != (len(bars),) or not np.issubdtype(keys.dtype, np.integer) or (keys < 0).any():
                raise KronosInputError(f"keys must be {len(bars)} integers >= 0, one per series, got {keys!r}")
        check_finite(bars, "bars of series")
        pred_len = self._spec(bars.shape[1], y_stamp.shape[1]).pred_len
        series = [self._series(bars[i], x_stamp[i], y_stamp[i], sampling.seed, None if keys is None else keys[i])
                  for i in range(len(bars))]
        return self._sample(series, pred_len, sampling, use_cache, verbose)

    # -------------------------------------------------------------------------------------------------- helpers
    def _spec(self, lookback: int, pred_len: int) -> ForecastSpec:
        """The specification of a forecast from ``lookback`` bars (raises if ``pred_len`` is impossible)."""
        return ForecastSpec(lookback, pred_len, self.clip, self.max_context)

    def _sample(self, series: list[_Series], pred_len: int, sampling: Sampling, use_cache: bool,
                verbose: bool) -> np.ndarray:
        out = np.empty((len(series), sampling.sample_count, pred_len, len(self.columns)), dtype=np.float64)
        batches = self._batches(series)
        with progress_bar(total=len(batches) * pred_len, desc="Kronos sampling", unit="step", disable=not verbose,
                          leave=False) as bar:
            for idx in batches:
                chunk = [series[i] for i in idx]
                with autocast(self.precision, self.device):
                    normed = sample_paths(self.tokenizer, self.model, *self._tensors(chunk),
                                          self._spec(len(chunk[0].x), pred_len), sampling, use_cache=use_cache,
                                          progress=bar).float().cpu().numpy()
                for row, i in enumerate(idx):
                    out[i] = denormalize(normed[row], series[i].mean, series[i].std)
                    check_forecast(out[i], i)
        return out

    def _series(self, bars: np.ndarray, x_stamp: np.ndarray, y_stamp: np.ndarray, seed: int,
                key: int | None) -> _Series:
        x, mean, std = normalize(bars, self.clip)
        if key is None:
            key = series_key(seed, x.tobytes(), x_stamp.tobytes(), y_stamp.tobytes())
        return _Series(x, x_stamp, y_stamp, mean, std, int(key))

    def _prepare(self, df_list, x_timestamp_list, y_timestamp_list, pred_len: int, seed: int) -> list[_Series]:
        if isinstance(df_list, pd.DataFrame) or not (len(df_list) == len(x_timestamp_list) == len(y_timestamp_list)):
            raise KronosInputError("df_list, x_timestamp_list and y_timestamp_list must be lists of equal length")
        if not df_list:
            raise KronosInputError("df_list is empty: nothing to forecast")
        return [self._prepare_one(df, x_ts, y_ts, pred_len, seed, f"series {i}")
                for i, (df, x_ts, y_ts) in enumerate(zip(df_list, x_timestamp_list, y_timestamp_list))]

    def _prepare_one(self, df: pd.DataFrame, x_timestamp, y_timestamp, pred_len: int, seed: int,
                     name: str) -> _Series:
        bars = complete_bars(df, name)
        if len(bars) < 2:
            raise KronosInputError(f"{name} has {len(bars)} context bar(s); at least 2 are needed to normalize")
        x_ts = as_datetimes(x_timestamp, f"x_timestamp of {name}")
        y_ts = as_datetimes(y_timestamp, f"y_timestamp of {name}")
        if (x_ts.tz is None) != (y_ts.tz is None):
            aware, naive = ("x_timestamp", "y_timestamp") if y_ts.tz is None else ("y_timestamp", "x_timestamp")
            raise KronosInputError(f"{aware} of {name} is timezone-aware ({(x_ts.tz or y_ts.tz)}) but {naive} is "
                                   f"naive: give both in one time zone")
        # time features read the wall clock: the forecast instants must be read in the history's zone
        y_ts = y_ts if x_ts.tz is None else y_ts.tz_convert(x_ts.tz)
        if len(x_ts) != len(bars):
            raise KronosInputError(f"x_timestamp of {name} has {len(x_ts)} entries for {len(bars)} bars")
        if len(y_ts) != pred_len:
            raise KronosInputError(f"y_timestamp of {name} has {len(y_ts)} entries but pred_len is {pred_len}")
        if y_ts[0] <= x_ts[-1]:
            raise KronosInputError(f"y_timestamp of {name} must come after the history: position 0 ({y_ts[0]}) is "
                                   f"not after the last x_timestamp ({x_ts[-1]}, position {len(x_ts) - 1})")
        return self._series(bars.to_numpy(), time_features(x_ts), time_features(y_ts), seed, None)

    def _batches(self, series: list[_Series]) -> list[list[int]]:
        """Indices grouped by context length (exact, no padding), in chunks of at most ``batch_size``."""
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(series):
            by_length[len(s.x)].append(i)
        return [idx[j:j + self.batch_size] for idx in by_length.values()
                for j in range(0, len(idx), self.batch_size)]

    def _tensors(self, chunk: list[_Series]) -> tuple[torch.Tensor, ...]:
        def stack(name: str) -> torch.Tensor:
            return torch.from_numpy(np.stack([getattr(s, name) for s in chunk])).to(self.device)
        keys = torch.tensor([s.key for s in chunk], dtype=torch.int64, device=self.device)
        return stack("x"), stack("x_stamp"), stack("y_stamp"), keys
