"""How good are the sampled paths? Calibration and accuracy of cached forecasts against what happened.

Kronos returns a distribution of future paths and signals are built from it, so its spread matters as much as
its centre. This module scores the paths of a :class:`~kronos_qlib.integration.forecast_cache.ForecastCache`
folder, step by step over the horizon, beside baselines built from history only:

- ``random_walk``: Gaussian daily log-returns with the stock's recent volatility (std of its last ``window``
  traded-day log-returns up to and including the forecast day t);
- ``bootstrap``: the same past returns resampled with replacement;
- ``zero_return``: the point forecast "the close stays at t's close".

Both random walks draw as many paths as the forecast, each (day, instrument) from its own seed, so the numbers
are reproducible and one forecast's baseline does not depend on what else is scored.

Few paths bias naive scores, so the scores are built to be fair to any path count m:

- Bands are order statistics: the central band of level q runs from the a-th to the b-th smallest of the m
  paths, a = max(1, floor((1 - q) / 2 * (m + 1) + 1/2)), b = m + 1 - a. With m exchangeable draws from the
  true distribution the realized value falls inside with probability (b - a) / (m + 1), reported beside each
  coverage as ``calibrated_50`` / ``calibrated_90`` (m = 5: 0.33 and 0.67; m = 20: 0.52 and 0.90).
- The PIT is the rank of the realized value among the paths (0..m, ties broken at random): uniform over the
  m + 1 ranks for a calibrated sampler.
- CRPS is the fair (unbiased) estimator mean|X_i - y| - sum_{i != j}|X_i - X_j| / (2 m (m - 1)); for a point
  forecast (m = 1, or all paths equal) it is the absolute error.

A (forecast, step) is scored only where the realized close exists: one that runs past the data's last day,
falls on a day the stock did not trade (suspended, delisted) or lacks ``min_history`` past returns for the
baselines is dropped and counted in :attr:`ForecastQuality.dropped`.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, KronosInputError
from .features import CLOSE
from .files import atomic_write, atomic_write_text
from .integration.forecast_cache import read_day

BAND_LEVELS = (0.5, 0.9)
SAMPLED_BASELINES = ("random_walk", "bootstrap")
#: the baseline a sampled model must beat on CRPS (``crps_skill_vs_rw`` > 0)
REFERENCE = "random_walk"


# ------------------------------------------------------------------------------------------- reading the cache
@dataclass
class ForecastSet:
    """Every cached forecast of a date range, one row each."""

    dates: pd.DatetimeIndex  # (n,) the forecast day t
    instruments: np.ndarray  # (n,) str
    closes: np.ndarray  # (n, sample_count, pred_len) the paths' closes, price units
    last_close: np.ndarray  # (n,) the close of t
    key: dict  # the cache's key.json

    @property
    def sample_count(self) -> int:
        return self.closes.shape[1]

    @property
    def pred_len(self) -> int:
        return self.closes.shape[2]

    def members_only(self, spans: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]], market: str) -> ForecastSet:
        """The forecasts of instruments that were members of ``market`` on their day (``spans`` as
        :func:`kronos_qlib.data.membership` returns them)."""
        keep = np.zeros(len(self.dates), dtype=bool)
        for inst, periods in spans.items():
            mine = self.instruments == inst
            for start, end in periods:
                keep |= mine & (self.dates >= start) & (self.dates <= end)
        if not keep.any():
            raise KronosInputError(f"none of the {len(keep)} forecasts is of a member of '{market}' on its day")
        return ForecastSet(self.dates[keep], self.instruments[keep], self.closes[keep], self.last_close[keep],
                           self.key)


def read_forecast_cache(folder: str | Path, start: str | None = None, end: str | None = None) -> ForecastSet:
    """The forecasts of a cache folder (``<cache_dir>/<digest>/``) whose day lies in [start, end]."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"forecast cache folder '{folder}' does not exist")
    if not (folder / "key.json").is_file():
        raise ConfigError(f"'{folder}' is not a forecast cache folder: it has no key.json")
    try:
        key = json.loads((folder / "key.json").read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"'{folder / 'key.json'}' is not valid JSON: {err}") from err
    files = sorted(folder.glob("????-??-??.npz"))
    days = pd.DatetimeIndex([pd.Timestamp(f.stem) for f in files])
    keep = (days >= pd.Timestamp(start or pd.Timestamp.min)) & (days <= pd.Timestamp(end or pd.Timestamp.max))
    files, days = [f for f, k in zip(files, keep) if k], days[keep]
    if not files:
        raise KronosInputError(f"'{folder}' holds no forecast day files (YYYY-MM-DD.npz) between "
                               f"{start or 'the first'} and {end or 'the last'} day")
    parts = [_read_day(f) for f in files]
    shapes = {p[1].shape[1:] for p in parts}
    if len(shapes) > 1:
        raise KronosInputError(f"the day files of '{folder}' mix path shapes (sample_count, pred_len): "
                               f"{sorted(shapes)}")
    return ForecastSet(dates=pd.DatetimeIndex(np.repeat(days.values, [len(p[0]) for p in parts])),
                       instruments=np.concatenate([p[0] for p in parts]),
                       closes=np.concatenate([p[1] for p in parts]),
                       last_close=np.concatenate([p[2] for p in parts]), key=key)


def _read_day(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instruments, the paths' closes, last closes) of one day file."""
    instruments, paths, last_close = read_day(path)
    return instruments, paths[..., CLOSE].astype(np.float64), last_close


# ----------------------------------------------------------------------------------------- realized and history
def load_closes(forecasts: ForecastSet, history: int) -> pd.DataFrame:
    """Daily closes (trading calendar x instrument, NaN where not traded) from the initialized Qlib provider:
    ``2 * history`` trading days before the first forecast day up to ``pred_len`` days after the last."""
    from qlib.data import D

    from .data.qlib_source import history_start, load_bars

    calendar = pd.DatetimeIndex(D.calendar(start_time=history_start(forecasts.dates.min(), history)))
    stop = calendar.searchsorted(forecasts.dates.max(), side="right") + forecasts.pred_len
    calendar = calendar[:stop]
    bars = load_bars(sorted(set(forecasts.instruments)), calendar[0], calendar[-1])
    return bars["close"].unstack("instrument").reindex(calendar)


def realized_closes(closes: pd.DataFrame, forecasts: ForecastSet) -> tuple[np.ndarray, np.ndarray]:
    """(n, pred_len) realized close at each step (NaN: not scorable) and a bool mask of the steps past the
    calendar's last day. Step k is the k-th trading day of ``closes.index`` after t."""
    calendar = pd.DatetimeIndex(closes.index)
    pos = calendar.get_indexer(forecasts.dates)
    if (pos < 0).any():
        day = forecasts.dates[int(np.argmax(pos < 0))]
        raise KronosInputError(f"forecast day {day.date()} is not a trading day of the provider's calendar")
    cols = closes.columns.get_indexer(forecasts.instruments)
    target = pos[:, None] + np.arange(1, forecasts.pred_len + 1)[None, :]
    beyond = target >= len(calendar)
    values = np.column_stack([closes.to_numpy(float), np.full(len(calendar), np.nan)])  # column -1: not loaded
    realized = values[np.minimum(target, len(calendar) - 1), cols[:, None]]
    realized[beyond] = np.nan
    at_t = values[pos, cols]
    wrong = ~np.isclose(at_t, forecasts.last_close, rtol=1e-4)
    if wrong.any():
        i = int(np.argmax(wrong))
        raise KronosInputError(
            f"the provider's close of {forecasts.instruments[i]} on {forecasts.dates[i].date()} is {at_t[i]}, the "
            f"cache's last_close {forecasts.last_close[i]}: the forecasts were made from other data (--provider)")
    return realized, beyond


def past_log_returns(closes: pd.DataFrame, dates: pd.DatetimeIndex, instruments: np.ndarray,
                     window: int) -> np.ndarray:
    """(n, window) the last ``window`` log-returns between consecutive traded closes up to and including each
    forecast day (oldest first, NaN-padded at the front where the history is shorter). Reads nothing after t."""
    out = np.full((len(dates), window), np.nan)
    for inst, rows in pd.Series(np.arange(len(dates))).groupby(instruments).indices.items():
        traded = closes[inst].dropna() if inst in closes.columns else pd.Series(dtype=float)
        logret = np.diff(np.log(traded.to_numpy()))  # logret[i] ends at traded day i + 1
        if len(logret) == 0:
            continue
        last = traded.index.searchsorted(dates[rows], side="right") - 1  # last traded day <= t
        idx = last[:, None] - window + np.arange(window)[None, :]
        out[rows] = np.where(idx >= 0, logret[np.clip(idx, 0, None)], np.nan)
    return out


def random_walk_paths(history: np.ndarray, last_close: np.ndarray, dates: pd.DatetimeIndex,
                      instruments: np.ndarray, sample_count: int, pred_len: int, method: str = "random_walk",
                      seed: int = 0) -> np.ndarray:
    """(n, sample_count, pred_len) closes of random walks from ``last_close`` whose daily log-returns are
    Gaussian with the std of ``history`` (``random_walk``) or drawn from it (``bootstrap``).

    Each forecast draws from a generator seeded by (seed, day, instrument). Rows whose history has fewer than
    2 returns are NaN.
    """
    if method not in SAMPLED_BASELINES:
        raise ConfigError(f"unknown baseline '{method}' (known: {', '.join(SAMPLED_BASELINES)})")
    counts = np.isfinite(history).sum(axis=1)
    sigma = np.nanstd(np.where(counts[:, None] >= 2, history, 0.0), axis=1, ddof=1)
    steps = np.full((len(history), sample_count, pred_len), np.nan)
    days = dates.strftime("%Y%m%d").astype(int)
    for i in np.flatnonzero(counts >= 2):
        rng = np.random.default_rng([seed, days[i], zlib.crc32(str(instruments[i]).encode())])
        if method == "random_walk":
            steps[i] = sigma[i] * rng.standard_normal((sample_count, pred_len))
        else:
            picks = history.shape[1] - counts[i] + rng.integers(0, counts[i], (sample_count, pred_len))
            steps[i] = history[i, picks]
    return last_close[:, None, None] * np.exp(np.cumsum(steps, axis=2))


# ------------------------------------------------------------------------------------------------ scores
def band_order_statistics(sample_count: int, level: float) -> tuple[int, int]:
    """(a, b), 1-based: the central ``level`` band runs from the a-th to the b-th smallest path."""
    if sample_count < 2:
        raise KronosInputError(f"a band needs at least 2 paths, got {sample_count}")
    a = max(1, int(np.floor((1 - level) / 2 * (sample_count + 1) + 0.5)))
    return a, sample_count + 1 - a


def calibrated_coverage(sample_count: int, level: float) -> float:
    """Chance that a draw of the true distribution falls in the band of ``sample_count`` draws of it."""
    a, b = band_order_statistics(sample_count, level)
    return (b - a) / (sample_count + 1)


def band_coverage(samples: np.ndarray, y: np.ndarray, level: float) -> np.ndarray:
    """Whether each y lies in its samples' (..., m) central ``level`` band (order statistics, inclusive)."""
    a, b = band_order_statistics(samples.shape[-1], level)
    ordered = np.sort(samples, axis=-1)
    return (ordered[..., a - 1] <= y) & (y <= ordered[..., b - 1])


def fair_crps(samples: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The fair (unbiased) sample CRPS of each y against its samples (..., m); the absolute error for m = 1."""
    m = samples.shape[-1]
    error = np.abs(samples - y[..., None]).mean(axis=-1)
    if m == 1:
        return error
    ordered = np.sort(samples, axis=-1)
    # sum_{i != j} |X_i - X_j| = 2 sum_i (2i - m - 1) X_(i) over the sorted draws
    weights = 2 * np.arange(1, m + 1) - m - 1
    return error - (ordered * weights).sum(axis=-1) / (m * (m - 1))


def pit_ranks(samples: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank of each y among its samples (..., m), 0..m, ties broken uniformly at random."""
    below = (samples < y[..., None]).sum(axis=-1)
    ties = (samples == y[..., None]).sum(axis=-1)
    return below + np.floor(rng.random(y.shape) * (ties + 1)).astype(int)


def _metrics(samples: np.ndarray, y: np.ndarray, last_close: np.ndarray) -> dict[str, float]:
    """The scores of forecasts (k, m) of closes y (k,) made at closes ``last_close`` (k,)."""
    m = samples.shape[-1]
    returns, realized = samples / last_close[:, None] - 1, y / last_close - 1
    median = np.median(returns, axis=1)
    directed = (median != 0) & (realized != 0)
    row = {"n": len(y)}
    for level in BAND_LEVELS:
        pct = round(100 * level)
        row[f"coverage_{pct}"] = float(band_coverage(samples, y, level).mean()) if m > 1 else np.nan
        row[f"calibrated_{pct}"] = calibrated_coverage(m, level) if m > 1 else np.nan
    row.update({
        "crps_close": float(fair_crps(samples, y).mean()),
        "crps_return": float(fair_crps(returns, realized).mean()),
        "median_return_mae": float(np.abs(median - realized).mean()),
        "hit_rate": float((np.sign(median) == np.sign(realized))[directed].mean()) if directed.any() else np.nan,
    })
    return row


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass
class ForecastQuality:
    """The scores of one forecast set and its baselines."""

    model: str  # the name of the scored forecasts in the tables
    table: pd.DataFrame  # index (model, step), step "all" pooled; one column per metric
    pit: pd.DataFrame  # index (model, step); columns the ranks 0..m; values the share of forecasts
    dropped: pd.DataFrame  # index step; forecasts, beyond_data, not_traded, short_history, scored
    sample_count: int

    def summary(self) -> pd.DataFrame:
        """The pooled row of every model."""
        return self.table.xs("all", level="step")


def evaluate(forecasts: ForecastSet, closes: pd.DataFrame, model: str = "kronos", window: int = 60,
             min_history: int = 20, seed: int = 0) -> ForecastQuality:
    """Score ``forecasts`` and the baselines against ``closes`` (trading calendar x instrument, NaN where not
    traded, covering ``window`` traded days before the first forecast and ``pred_len`` after the last)."""
    if not 2 <= min_history <= window:
        raise ConfigError(f"min_history must lie in [2, window={window}], got {min_history}")
    realized, beyond = realized_closes(closes, forecasts)
    history = past_log_returns(closes, forecasts.dates, forecasts.instruments, window)
    short = np.isfinite(history).sum(axis=1) < min_history
    scored = np.isfinite(realized) & ~short[:, None]
    if not scored.any():
        raise KronosInputError(
            f"none of the {len(realized)} forecasts can be scored: their steps run past the data's last day "
            f"({closes.index[-1].date()}), fall on days the stocks did not trade, or lack {min_history} past returns")
    m, horizon = forecasts.sample_count, forecasts.pred_len
    models = {model: forecasts.closes}
    for method in SAMPLED_BASELINES:
        models[method] = random_walk_paths(history, forecasts.last_close, forecasts.dates, forecasts.instruments,
                                           m, horizon, method, seed)
    models["zero_return"] = forecasts.last_close[:, None, None] * np.ones((1, 1, horizon))
    rng = np.random.default_rng(seed)
    rows, pit = {}, {}
    for name, paths in models.items():
        samples = np.moveaxis(paths, 2, 1)  # (n, pred_len, m)
        for step in range(horizon):
            keep = scored[:, step]
            if not keep.any():  # counted in ``dropped``
                continue
            rows[name, step + 1] = _metrics(samples[keep, step], realized[keep, step], forecasts.last_close[keep])
            if samples.shape[-1] > 1:
                ranks = pit_ranks(samples[keep, step], realized[keep, step], rng)
                pit[name, step + 1] = np.bincount(ranks, minlength=samples.shape[-1] + 1) / len(ranks)
        rows[name, "all"] = _metrics(samples[scored], realized[scored],
                                     np.broadcast_to(forecasts.last_close[:, None], scored.shape)[scored])
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.names = ["model", "step"]
    reference = table.xs(REFERENCE, level="model")["crps_return"]
    steps = table.index.get_level_values("step")
    table["crps_skill_vs_rw"] = 1 - table["crps_return"] / reference.reindex(steps).to_numpy()
    traded = ~beyond & np.isfinite(realized)
    dropped = pd.DataFrame({"forecasts": len(realized), "beyond_data": beyond.sum(axis=0),
                            "not_traded": (~beyond & ~traded).sum(axis=0),
                            "short_history": (traded & short[:, None]).sum(axis=0), "scored": scored.sum(axis=0)},
                           index=pd.RangeIndex(1, horizon + 1, name="step"))
    pit_frame = pd.DataFrame.from_dict(pit, orient="index")
    pit_frame.index = pd.MultiIndex.from_tuples(pit_frame.index, names=["model", "step"])
    return ForecastQuality(model, table, pit_frame, dropped, m)


# ----------------------------------------------------------------------------------------------- reporting
def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if np.isfinite(value) else "n/a"
    return str(value)


def _markdown(frame: pd.DataFrame) -> str:
    cells = frame.reset_index().astype(object).map(_cell)
    header = "| " + " | ".join(map(str, cells.columns)) + " |"
    rule = "|---" * len(cells.columns) + "|"
    return "\n".join([header, rule, *("| " + " | ".join(row) + " |" for row in cells.itertuples(index=False))])


def format_report(quality: ForecastQuality) -> str:
    """Markdown: the pooled summary, the per-step table and what was dropped."""
    m = quality.sample_count
    bands = ", ".join(f"{100 * q:.0f}%: paths {a}..{b} of {m}" for q in BAND_LEVELS
                      for a, b in [band_order_statistics(m, q)]) if m > 1 else "n/a (one path)"
    skill = quality.summary().loc[quality.model, "crps_skill_vs_rw"]
    verdict = (f"{quality.model} beats the random walk on CRPS (skill {skill:.4f})." if skill > 0
               else f"**{quality.model} does not beat the random walk on CRPS (skill {skill:.4f}).**")
    return "\n\n".join([
        f"## Summary (all steps pooled, {m} paths per forecast)", _markdown(quality.summary()), verdict,
        f"Bands are order statistics of the paths ({bands}); calibrated_50/90 is the coverage a perfectly "
        "calibrated sampler with as many paths reaches. crps_close is in price units (high-priced stocks weigh "
        "most), crps_return compares stocks alike. crps_skill_vs_rw = 1 - CRPS(return) / CRPS(random walk): "
        "below 0 is worse than the random walk. hit_rate counts forecasts whose median and realized returns are "
        "both nonzero.",
        "## By step", _markdown(quality.table.drop(index="all", level="step")),
        "## Forecasts dropped (not scored)",
        "beyond_data: the step runs past the data's last day; not_traded: no close that day (suspended or "
        "delisted); short_history: too few past returns for the baselines.",
        _markdown(quality.dropped),
    ]) + "\n"


def plot_coverage(quality: ForecastQuality, ax=None):
    """Coverage of each band by step with the nominal level (dotted) and the calibrated-with-m value (dashed)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    table = quality.table.drop(index="all", level="step")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for level, style in zip(BAND_LEVELS, ("-", "--")):
        pct = round(100 * level)
        for name, color in zip(table.index.unique("model"), colors):
            coverage = table.loc[name, f"coverage_{pct}"]
            if coverage.notna().any():
                ax.plot(coverage.index, coverage.values, style, marker="o", color=color, label=f"{name} {pct}%")
        ax.axhline(level, color="black", ls=":", lw=1)
        ax.axhline(table[f"calibrated_{pct}"].dropna().iloc[0], color="grey", ls="--", lw=1)
    ax.set_xlabel("step (trading days after t)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("share of realized closes in the band")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"band coverage (dotted: nominal, grey dashed: calibrated with {quality.sample_count} paths)")
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_pit(quality: ForecastQuality):
    """Rank histogram of every sampled model, pooled over steps; a calibrated sampler is flat at 1 / (m + 1)."""
    import matplotlib.pyplot as plt

    names = list(quality.pit.index.unique("model"))
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        shares = quality.pit.loc[name].mean(axis=0)
        ax.bar(shares.index, shares.values, color="tab:blue")
        ax.axhline(1 / len(shares), color="black", ls="--", lw=1)
        ax.set_title(name)
        ax.set_xlabel("rank of the realized close among the paths")
    axes[0, 0].set_ylabel("share of forecasts")
    return figure


def plot_crps(quality: ForecastQuality, ax=None):
    """CRPS of the return by step, the model against the baselines."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    crps = quality.table["crps_return"].drop(index="all", level="step").unstack("model")
    for name in quality.table.index.unique("model"):
        ax.plot(crps.index, crps[name].values, marker="o", lw=2.5 if name == quality.model else 1.2, label=name)
    ax.set_xlabel("step (trading days after t)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("CRPS of the return (lower is better)")
    ax.set_title("CRPS by step")
    ax.legend(fontsize=8)
    return ax


def write_report(quality: ForecastQuality, out: str | Path) -> list[Path]:
    """table.md, table.csv, crps.png, coverage.png and pit.png (with 2 paths or more) in ``out``, written
    atomically."""
    import matplotlib.pyplot as plt

    out = Path(out)
    atomic_write_text(out / "table.md", format_report(quality))
    atomic_write_text(out / "table.csv", quality.table.to_csv())
    figures = {"crps.png": plot_crps(quality).figure}
    if quality.sample_count > 1:  # one path has no band and no rank
        figures.update({"coverage.png": plot_coverage(quality).figure, "pit.png": plot_pit(quality)})
    for name, figure in figures.items():
        figure.tight_layout()
        atomic_write(out / name, lambda f: figure.savefig(f, format="png", dpi=120))
        plt.close(figure)
    return [out / "table.md", out / "table.csv", *(out / name for name in figures)]
