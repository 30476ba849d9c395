"""Plots of recorded runs: cumulative excess returns and training curves."""
from __future__ import annotations

from pathlib import Path

from .runs import RecordedRun


def plot_cumulative_excess(runs: list[RecordedRun], path: str | Path | None = None, ax=None,
                           title: str = "cumulative excess return over the benchmark"):
    """Cumulative excess return over the benchmark, with cost (solid) and without (dashed)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 4))
    for run, color in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        ax.plot(run.excess_return(True).cumsum(), color=color, label=f"{run.experiment} (with cost)")
        ax.plot(run.excess_return(False).cumsum(), color=color, ls="--", alpha=0.6,
                label=f"{run.experiment} (no cost)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel("cumulative excess return (sum of daily)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=120)
    return ax


def plot_training_curves(run: RecordedRun, path: str | Path | None = None):
    """Train and valid loss of each stage by epoch (one panel per stage), as recorded under qrun."""
    import matplotlib.pyplot as plt

    stages = sorted({key.split("/")[0] for key in run.curves.columns})
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        for split in ("train", "valid"):
            column = f"{stage}/{split}_loss"
            if column in run.curves:
                ax.plot(run.curves.index, run.curves[column], marker="o", label=f"{split} loss")
        ax.set_title(f"{run.experiment}: {stage} stage")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


