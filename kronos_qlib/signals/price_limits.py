"""Daily price limits: how far a sampled path may move in one day before the move is clipped.

China's A-share exchanges stop a stock's price at a fixed daily limit from the previous close: +-20% on the STAR
Market (SH688..., SH689...) and ChiNext (SZ300..., SZ301..., SZ302...), +-30% on the Beijing exchange (BJ...), +-10% on
the main boards (other SH and SZ codes). A code of no A-share exchange is an error under this rule, not a silent
10%.
(ST stocks have +-5%, and ChiNext had +-10% before 2020-08-24: the wider limit is kept for them, so a clip only
removes moves no stock of that board could make.) Other markets: a fraction for every stock, or no limit.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

#: ``price_limit`` names a rule by market; a float is one limit for every stock; None clips nothing.
CN = "cn"
CN_LIMITS = (("SH688", 0.2), ("SH689", 0.2), ("SZ300", 0.2), ("SZ301", 0.2), ("SZ302", 0.2), ("BJ", 0.3))
CN_EXCHANGES = ("SH", "SZ", "BJ")
CN_MAIN_BOARD = 0.1


def check_price_limit(value: str | float | None) -> str | float | None:
    """A valid ``price_limit`` setting, or an error that says what is allowed."""
    if value is None or value == CN:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < float(value) < 1.0:
        return float(value)
    raise ConfigError(f"price_limit must be '{CN}' (China A-share limits by board), a daily fraction in (0, 1) such "
                      f"as 0.1, or null (no limit), got {value!r}")


def price_limits(instruments: Sequence[str], rule: str | float | None) -> np.ndarray | None:
    """Each instrument's daily limit as a fraction under ``rule`` (None: no limit)."""
    rule = check_price_limit(rule)
    if rule is None:
        return None
    if rule != CN:
        return np.full(len(instruments), rule)
    foreign = [code for code in instruments if not str(code).upper().startswith(CN_EXCHANGES)]
    if foreign:
        raise ConfigError(f"price_limit '{CN}' applies China A-share limits, but instrument '{foreign[0]}' is not an "
                          f"{'/'.join(CN_EXCHANGES)} code: set price_limit to a daily fraction (e.g. 0.1) or null")
    return np.array([next((limit for prefix, limit in CN_LIMITS if str(code).upper().startswith(prefix)),
                          CN_MAIN_BOARD) for code in instruments])
