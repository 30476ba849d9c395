"""Forecast-quality reports: the markdown table, the coverage / PIT / CRPS plots and the files
scripts/evaluate_forecasts.py writes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write, atomic_write_text
from .forecast_scores import BAND_LEVELS, ForecastQuality, band_order_statistics


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
