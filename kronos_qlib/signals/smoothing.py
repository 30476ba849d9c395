"""Scores smoothed across days: a persistent score trades less, and at about 0.2% a round trip, turnover decides
what a TopkDropout book keeps of its edge."""
from __future__ import annotations

import pandas as pd

from ..errors import ConfigError


def check_halflife(halflife: float | None) -> float | None:
    if halflife is None:
        return None
    if isinstance(halflife, bool) or not isinstance(halflife, (int, float)) or not halflife > 0:
        raise ConfigError(f"signal_halflife must be a positive number of trading days or null, got {halflife!r}")
    return float(halflife)


def smooth_scores(scores: pd.Series, halflife: float | None) -> pd.Series:
    """Each instrument's exponential average of its daily scores, ``halflife`` in the days it was scored (None:
    unchanged). The average at day t weighs days up to t only, so it uses nothing after t; it starts at the first
    scored day given, so a segment's first days average fewer scores."""
    halflife = check_halflife(halflife)
    if halflife is None:
        return scores
    wide = scores.unstack("instrument")  # days x instruments, NaN where a stock was not scored
    smoothed = wide.ewm(halflife=halflife, adjust=True, ignore_na=True).mean().where(wide.notna())
    return smoothed.stack().reindex(scores.index).rename(scores.name)
