"""Statistics of daily series that carry their claims.

Daily IC and daily excess returns are autocorrelated (a volatility-like score ranks the same stocks for weeks, a
held portfolio earns overlapping returns), so a t-statistic that assumes independent days overstates them. Every
daily mean here gets a Newey-West t with Bartlett weights (lag :data:`NW_LAG` unless told), and "A beats B" is a
paired test: the t of the daily difference of A and B on the days both have.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import KronosInputError

#: Newey-West lag (trading days) of every t reported: a week of autocorrelation, the shortest the research rules allow.
NW_LAG = 5


def newey_west_se(values: pd.Series | np.ndarray, lag: int = NW_LAG) -> float:
    """Standard error of the mean of ``values`` (NaN dropped) robust to autocorrelation up to ``lag`` days:
    sqrt((gamma_0 + 2 sum_k (1 - k / (lag + 1)) gamma_k) / n)."""
    if lag < 0:
        raise KronosInputError(f"the Newey-West lag must be >= 0, got {lag}")
    x = np.asarray(pd.Series(values).dropna(), dtype=np.float64)
    n = len(x)
    if n < 2:
        return float("nan")
    d = x - x.mean()
    variance = d @ d / n
    for k in range(1, min(lag, n - 1) + 1):
        variance += 2.0 * (1.0 - k / (lag + 1)) * (d[k:] @ d[:-k]) / n
    return float(np.sqrt(max(variance, 0.0) / n))


def mean_t(values: pd.Series, lag: int = NW_LAG) -> dict[str, float]:
    """The mean of a daily series, its Newey-West t and the number of days."""
    x = pd.Series(values).dropna()
    se = newey_west_se(x, lag)
    mean = float(x.mean()) if len(x) else float("nan")
    return {"mean": mean, "t": mean / se if se > 0 else float("nan"), "days": float(len(x))}


def paired_difference(a: pd.Series, b: pd.Series, lag: int = NW_LAG) -> dict[str, float]:
    """A minus B day by day on the days both have: mean daily difference and its Newey-West t."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    if joined.empty:
        raise KronosInputError("the two daily series share no day: a paired test needs the same dates")
    return mean_t(joined["a"] - joined["b"], lag)


def mean_over_seeds(per_seed: list[pd.Series]) -> pd.Series:
    """The day-by-day mean of one daily series over seeds, on the days every seed has a value (a day one seed lacks,
    e.g. a NaN IC, is dropped rather than averaged over fewer seeds): the series a paired test across seeds uses,
    since the seeds share one test period, whose sampling error dominates their spread."""
    if not per_seed:
        raise KronosInputError("no seed to average")
    return pd.concat(per_seed, axis=1, join="inner").dropna().mean(axis=1)
