"""Calibrated paths, the method of the path-calibration study (research/path_calibration.py): a per-step drift
shrink, spread scale and volatility anchor of the sampled paths, fitted on valid only.

The paths of a small Kronos are too narrow (their bands cover less than a calibrated sampler's) and their drift is
mostly noise (the median path's return error is larger than forecasting no move). Both are fixed after sampling,
as a documented post-processing of stored paths (the cache keeps the raw draws): at step h, with r the path's log
return from t's close and c_h the centre of the forecast,

    r' = drift[h] * c_h + scale[h] * (v_h / s_h) ** anchor[h] * (r - c_h)

so ``drift`` shrinks the centre towards no move and ``scale`` widens or narrows the spread around it. ``anchor``
pulls the spread towards the stock's own recent volatility: s_h is the forecast's spread (the std of the centre
paths' log returns at step h), v_h = sigma * sqrt(h) that of a random walk with the stock's volatility sigma (the
std of its last ``window`` daily log returns up to t, as the random-walk baseline has it); anchor 0 keeps Kronos's
spread, 1 replaces its level by the stock's, keeping Kronos's shape. Where sigma is unknown (a short history) the
spread is left to ``scale`` alone, and v_h / s_h is clipped to [1/RATIO_CLIP, RATIO_CLIP] so that a forecast
whose centre paths barely differ is not blown up.

The centre (and s_h) come from ``centre_paths`` other paths of the same forecast, never from the paths it moves:
centred on their own median, the moved paths would be negatively correlated, and the fair CRPS (whose spread term
assumes independent draws) and the order-statistics coverage of a calibrated sampler would credit them with spread
they lack, the more so the fewer the paths. Around an independent centre they are independent draws given it, so
both hold. A calibrated forecast of m paths thus samples m + ``centre_paths``.

A de-normalized path can cross zero, so its prices are first floored at CLOSE_FLOOR x t's close, as the signals
floor them. Every price of the path at that step is then multiplied by exp(r' - r), which keeps each path a
plausible price path: open, high, low and close keep their order, and prices stay positive.

:func:`fit_calibration` chooses (drift, scale, anchor) per step from a grid by the mean fair CRPS of the return on the
valid segment's forecasts. It refuses any forecast made outside the valid dates it is given and cuts the realized
closes at valid's end (a step past it is not scored), so that test data cannot reach the choice.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from kronos_qlib.errors import ConfigError
from kronos_qlib.evaluation.baselines import past_log_returns
from kronos_qlib.evaluation.forecast_scores import fair_crps
from kronos_qlib.evaluation.forecasts import ForecastSet, realized_closes
from kronos_qlib.features import BAR_COLUMNS, CLOSE, PRICE_COLUMNS
from kronos_qlib.files import atomic_write_text
from kronos_qlib.signals.paths import floored, floored_log_returns

#: candidate drift factors (0: the median path says nothing, 1: as sampled), spread scales and volatility anchors
DRIFT_GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
SCALE_GRID = tuple(np.round(np.arange(0.5, 3.01, 0.1), 2))
ANCHOR_GRID = (0.0, 0.5, 1.0)
#: bound of the volatility ratio v_h / s_h (and of its inverse)
RATIO_CLIP = 10.0


@dataclass(frozen=True)
class PathCalibration:
    """Per-step (1..pred_len) drift factor, spread scale and volatility anchor of the paths' log returns, the
    number of other paths whose median is the centre, and the valid dates they were fitted on."""

    drift: tuple[float, ...]
    scale: tuple[float, ...]
    anchor: tuple[float, ...]
    centre_paths: int
    fitted_on: tuple[str, str]

    def apply_to_closes(self, closes: np.ndarray, last_close: np.ndarray, centre_closes: np.ndarray,
                        volatility: np.ndarray) -> np.ndarray:
        """Calibrated closes of paths (n, m, pred_len) made from closes ``last_close`` (n,), around the median of
        ``centre_closes`` (n, centre_paths, pred_len), other paths of the same forecasts, for stocks of recent
        daily ``volatility`` (n,; NaN: unknown, see :func:`trailing_volatility`)."""
        return floored(closes, last_close) * self._factors(closes, last_close, centre_closes, volatility)

    def apply_to_paths(self, paths: np.ndarray, last_close: np.ndarray, centre_closes: np.ndarray,
                       volatility: np.ndarray) -> np.ndarray:
        """Calibrated bars (n, m, pred_len, 6): every price column of a step moves with its close, so
        open <= / >= close order and high / low bounds are kept; volume and amount are left as sampled."""
        out = paths.copy()
        prices = [BAR_COLUMNS.index(column) for column in PRICE_COLUMNS]
        factors = self._factors(paths[..., CLOSE], last_close, centre_closes, volatility)[..., None]
        out[..., prices] = floored(paths[..., prices], last_close) * factors
        return out

    def _factors(self, closes: np.ndarray, last_close: np.ndarray, centre_closes: np.ndarray,
                 volatility: np.ndarray) -> np.ndarray:
        if closes.shape[-1] != len(self.drift):
            raise ConfigError(f"the calibration has {len(self.drift)} steps, the paths {closes.shape[-1]}")
        if centre_closes.shape[1] != self.centre_paths:
            raise ConfigError(f"the calibration centres on the median of {self.centre_paths} other paths, "
                              f"got {centre_closes.shape[1]}")
        if centre_closes.shape[::2] != closes.shape[::2]:  # one centre per forecast and step, never broadcast
            raise ConfigError(f"centre paths of {centre_closes.shape[0]} forecasts x {centre_closes.shape[2]} steps "
                              f"for paths of {closes.shape[0]} x {closes.shape[2]}")
        r = floored_log_returns(closes, last_close)
        centre = path_centre(centre_closes, last_close)
        ratio = volatility_ratio(centre_closes, last_close, volatility)
        drift, scale, anchor = (np.asarray(values) for values in (self.drift, self.scale, self.anchor))
        return np.exp(drift * centre + scale * ratio ** anchor * (r - centre) - r)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> PathCalibration:
        try:
            values = json.loads(Path(path).read_text())
            calibration = cls(tuple(values["drift"]), tuple(values["scale"]), tuple(values["anchor"]),
                              int(values["centre_paths"]), tuple(values["fitted_on"]))
            steps = {len(calibration.drift), len(calibration.scale), len(calibration.anchor)}
            if calibration.centre_paths < 1 or len(steps) != 1:
                raise ValueError(f"centre_paths {calibration.centre_paths} (>= 1), {len(calibration.drift)} drift, "
                                 f"{len(calibration.scale)} scale and {len(calibration.anchor)} anchor steps (equal)")
            return calibration
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"'{path}' is not a path calibration file ({type(err).__name__}: {err})") from err


def path_centre(closes: np.ndarray, last_close: np.ndarray) -> np.ndarray:
    """(n, 1, pred_len): the median log return over the paths (n, k, pred_len) of each forecast."""
    return np.median(floored_log_returns(closes, last_close), axis=1, keepdims=True)


def volatility_ratio(centre_closes: np.ndarray, last_close: np.ndarray, volatility: np.ndarray) -> np.ndarray:
    """(n, 1, pred_len): v_h / s_h, a random walk's spread at step h over the forecast's own (the std of the centre
    paths' log returns), clipped to [1 / RATIO_CLIP, RATIO_CLIP]; 1 where the stock's volatility is unknown."""
    own = np.std(floored_log_returns(centre_closes, last_close), axis=1, keepdims=True)
    steps = np.arange(1, centre_closes.shape[-1] + 1)
    walk = np.asarray(volatility, dtype=np.float64)[:, None, None] * np.sqrt(steps)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.clip(walk / own, 1 / RATIO_CLIP, RATIO_CLIP)  # own 0: inf, clipped
    return np.where(np.isfinite(walk), ratio, 1.0)


def trailing_volatility(closes: pd.DataFrame, forecasts: ForecastSet, window: int, min_history: int) -> np.ndarray:
    """(n,) each forecast's stock's daily log-return std over its last ``window`` traded days up to t (the random
    walk's sigma; nothing after t is read); NaN with fewer than ``min_history`` returns."""
    history = past_log_returns(closes, forecasts.dates, forecasts.instruments, window)
    enough = np.isfinite(history).sum(axis=1) >= min_history
    return np.where(enough, np.nanstd(np.where(enough[:, None], history, 0.0), axis=1, ddof=1), np.nan)


def split_centre(forecasts: ForecastSet, centre_paths: int) -> tuple[ForecastSet, np.ndarray]:
    """(the forecasts' paths to move, the closes of the last ``centre_paths`` paths that locate their centre)."""
    if not 0 < centre_paths < forecasts.sample_count:
        raise ConfigError(f"{forecasts.sample_count} paths per forecast cannot give {centre_paths} centre paths "
                          f"and at least one to calibrate")
    moved = forecasts.closes[:, :-centre_paths]
    return replace(forecasts, closes=moved), forecasts.closes[:, -centre_paths:]


def fit_calibration(forecasts: ForecastSet, closes: pd.DataFrame, valid: tuple[str, str], centre_paths: int,
                    window: int, min_history: int) -> tuple[PathCalibration, pd.DataFrame]:
    """The (drift, scale, anchor) of each step with the lowest mean fair CRPS of the return on ``forecasts``, all
    of which must be made inside ``valid`` (start, end), scored against ``closes`` cut at valid's end; their last
    ``centre_paths`` paths locate the centre of the others (see :func:`split_centre`), and the stocks' volatility
    is read from ``closes`` up to each forecast day (:func:`trailing_volatility`). Also the table of every step's
    choice with its CRPS before and after."""
    start, end = (pd.Timestamp(day) for day in valid)
    outside = (forecasts.dates < start) | (forecasts.dates > end)
    if outside.any():
        raise ConfigError(f"the calibration is fitted on valid {start.date()}..{end.date()} only: "
                          f"{int(outside.sum())} forecast(s) lie outside it (the first "
                          f"{forecasts.dates[outside][0].date()})")
    moved, centre_closes = split_centre(forecasts, centre_paths)
    realized, _ = realized_closes(closes.loc[:end], moved)  # a step past valid's end is not scored
    log_r = floored_log_returns(moved.closes, moved.last_close)
    centre = path_centre(centre_closes, moved.last_close)
    ratio = volatility_ratio(centre_closes, moved.last_close, trailing_volatility(closes, moved, window, min_history))
    drift, scale, anchor, rows = [], [], [], []
    for h in range(moved.pred_len):
        keep = np.isfinite(realized[:, h])
        if not keep.any():
            raise ConfigError(f"no forecast of valid {start.date()}..{end.date()} has a realized close at step "
                              f"{h + 1}")
        y = realized[keep, h] / moved.last_close[keep] - 1
        c, d = centre[keep, :, h], log_r[keep, :, h] - centre[keep, :, h]
        grid = {}
        for e in ANCHOR_GRID:
            anchored = ratio[keep, :, h] ** e * d
            grid.update({(a, b, e): float(fair_crps(np.exp(a * c + b * anchored) - 1, y).mean())
                         for a in DRIFT_GRID for b in SCALE_GRID})
        (a, b, e), best = min(grid.items(), key=lambda item: item[1])
        drift.append(float(a))
        scale.append(float(b))
        anchor.append(float(e))
        rows.append({"step": h + 1, "drift": a, "scale": b, "anchor": e, "crps_sampled": grid[1.0, 1.0, 0.0],
                     "crps_calibrated": best, "forecasts": int(keep.sum())})
    return (PathCalibration(tuple(drift), tuple(scale), tuple(anchor), centre_paths,
                            (str(start.date()), str(end.date()))), pd.DataFrame(rows).set_index("step"))
