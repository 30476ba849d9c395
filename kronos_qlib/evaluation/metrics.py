"""Daily cross-sectional metrics of a score against a label (``(datetime, instrument)``-indexed series)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import KronosInputError
from .statistics import NW_LAG, mean_t

#: trading days a label reaches past its day: the workflows' label runs from close t + 1 to close t + 2
LABEL_DAYS = 2
#: Seed of the random tie-breaking of quantile buckets: a score with few distinct values (prob_up of 5 paths has
#: 6) would otherwise fill its buckets in instrument order.
TIE_SEED = 0


def _joined(score: pd.Series, label: pd.Series) -> pd.DataFrame:
    return pd.concat([score.rename("score"), label.rename("label")], axis=1, join="inner").dropna()


def _day_codes(frame: pd.DataFrame) -> np.ndarray:
    return pd.factorize(frame.index.get_level_values("datetime"), sort=True)[0]


def group_returns(score: pd.Series, label: pd.Series, groups: int = 5) -> pd.DataFrame:
    """Mean label of each score quantile per day; column 1 holds the lowest scores. Ties are broken at random
    (fixed seed), so tied stocks spread evenly over the buckets they straddle."""
    frame = _joined(score, label)
    days = _day_codes(frame)
    order = np.lexsort((np.random.default_rng(TIE_SEED).random(len(frame)), frame["score"].to_numpy(), days))
    position = np.empty(len(frame), dtype=np.int64)
    position[order] = np.arange(len(frame))
    counts = np.bincount(days)
    rank = position - (np.cumsum(counts) - counts)[days] + 1  # 1..n within each day
    bucket = np.ceil(rank * groups / counts[days]).astype(int)
    means = frame["label"].groupby([frame.index.get_level_values("datetime"), bucket]).mean().unstack()
    return means.reindex(columns=range(1, groups + 1)).rename_axis(index="datetime", columns=None)


def daily_ic(score: pd.Series, label: pd.Series, method: str = "pearson") -> pd.Series:
    """Cross-sectional correlation of score and label per day (``method="spearman"``: RankIC, on average ranks)."""
    frame = _joined(score, label)
    by_day = frame.groupby(level="datetime")
    if method == "spearman":
        frame = by_day.rank(method="average")
        by_day = frame.groupby(level="datetime")
    elif method != "pearson":
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    centred = frame - by_day.transform("mean")
    sums = (centred.assign(xy=centred["score"] * centred["label"], xx=centred["score"] ** 2,
                           yy=centred["label"] ** 2)[["xy", "xx", "yy"]].groupby(level="datetime").sum())
    return (sums["xy"] / np.sqrt(sums["xx"] * sums["yy"])).replace([np.inf, -np.inf], np.nan)


def residualize(score: pd.Series, control: pd.Series) -> pd.Series:
    """The part of ``score`` that ``control`` does not explain: per day, the residual of a least-squares fit of
    score on control (with intercept)."""
    joined = pd.concat([score.rename("score"), control.rename("control")], axis=1, join="inner").dropna()

    def residual(day: pd.DataFrame) -> pd.Series:
        x = day["control"] - day["control"].mean()
        beta = (x * day["score"]).sum() / (x * x).sum() if (x * x).sum() > 0 else 0.0
        return day["score"] - day["score"].mean() - beta * x

    return joined.groupby(level="datetime", group_keys=False).apply(residual).rename(score.name)


def partial_ic(score: pd.Series, control: pd.Series, label: pd.Series, lag: int = NW_LAG) -> dict[str, float]:
    """What ``score`` predicts beyond ``control``: the daily correlation of the score's residual with the label's
    residual, both regressed on the control per day (the partial IC; for RankIC, on ranks), with Newey-West t."""
    joined = pd.concat([score.rename("score"), control.rename("control"), label.rename("label")], axis=1,
                       join="inner").dropna()
    out = {}
    for name, ranked in (("IC", False), ("RankIC", True)):
        frame = joined.groupby(level="datetime", group_keys=False).rank() if ranked else joined
        daily = daily_ic(residualize(frame["score"], frame["control"]),
                         residualize(frame["label"], frame["control"]))
        stats = mean_t(daily, lag)
        out[f"partial {name}"], out[f"partial {name} t"] = stats["mean"], stats["t"]
    return out


def topk_excess(score: pd.Series, label: pd.Series, k: int = 50) -> pd.DataFrame:
    """Per day: the mean label of the ``k`` highest scores minus the mean label of every scored stock (what an
    equal-weight top-k book earns over the universe before costs) and the share of the top k not in the previous
    day's top k (its turnover; 1 on the first day). Ties at the k-th place are broken at random (fixed seed)."""
    frame = _joined(score, label)
    frame = frame.sample(frac=1.0, random_state=TIE_SEED)  # ties at the k-th place: at random, not in code order
    top = (frame.groupby(level="datetime")["score"].rank(method="first", ascending=False) <= k).sort_index()
    frame = frame.sort_index()
    day_mean = frame["label"].groupby(level="datetime").mean()
    excess = frame["label"][top].groupby(level="datetime").mean() - day_mean
    held = top.unstack("instrument", fill_value=False).astype(bool)
    new = (held & ~held.shift(1, fill_value=False)).sum(axis=1) / held.sum(axis=1).clip(lower=1)
    return pd.DataFrame({"excess": excess, "turnover": new}).rename_axis("datetime")


def signal_metrics(score: pd.Series, label: pd.Series, groups: int = 5, lag: int = NW_LAG) -> dict[str, float]:
    """IC, ICIR, RankIC, RankICIR as Qlib's SigAnaRecord reports them (ICIR: mean / std of the daily values, not
    annualized), each daily mean with its Newey-West t, and the daily top-minus-bottom quantile spread."""
    ic, rank_ic = daily_ic(score, label), daily_ic(score, label, "spearman")
    quantiles = group_returns(score, label, groups)
    spread = mean_t((quantiles[groups] - quantiles[1]).dropna(), lag)
    top = mean_t((quantiles[groups] - quantiles.mean(axis=1)).dropna(), lag)
    ic_t, rank_t = mean_t(ic, lag), mean_t(rank_ic, lag)
    return {"IC": ic_t["mean"], "IC t": ic_t["t"], "ICIR": ic.mean() / ic.std(),
            "RankIC": rank_t["mean"], "RankIC t": rank_t["t"], "RankICIR": rank_ic.mean() / rank_ic.std(),
            "long-short spread (daily)": spread["mean"], "long-short t": spread["t"],
            "top quintile spread (daily)": top["mean"], "top quintile t": top["t"], "days": ic_t["days"]}


def drawdown(returns: pd.Series) -> pd.Series:
    """Drawdown of the cumulative (summed) returns, as Qlib measures max drawdown."""
    cumulative = returns.cumsum()
    return cumulative - cumulative.cummax()


def rank_correlation(a: pd.Series, b: pd.Series) -> pd.Series:
    """Daily cross-sectional rank correlation between two scores, on the stocks both scored."""
    joined = pd.concat([a.rename("a"), b.rename("b")], axis=1).dropna()
    return joined.groupby(level="datetime").apply(lambda d: d["a"].corr(d["b"], method="spearman"))


def labels_inside_segment(label: pd.Series, days: int = LABEL_DAYS) -> pd.Series:
    """``label`` (indexed by datetime, instrument) without its last ``days`` trading days, whose label closes lie
    after the segment (in test, for a valid label): the part a choice made on valid may read."""
    dates = label.index.get_level_values("datetime").unique().sort_values()
    if len(dates) <= days:
        raise KronosInputError(f"the label has {len(dates)} days: none is left once the last {days}, whose label "
                               "reaches past the segment, are dropped")
    return label[label.index.get_level_values("datetime") <= dates[-1 - days]]
