"""Frozen probe of the return head: does the generative predictor's representation hold cross-sectional
information at all?

    python -m research.head_probe [--provider ../shared/cn_data] [--work outputs/head_probe] [--train-every 5]

Run from the repository root. It fits the shipped workflow's model as qrun does (workflows/kronos_csi300.yaml,
CPU preset; finished stages in runs/ are reused), computes the predictor's final hidden state of every stock-day
once (train: every ``--train-every``-th trading day; valid: every day), and trains only a head on them for each
candidate (horizon H x head shape), keeping the epoch of best valid loss. Each candidate is scored on VALID only:
IC, RankIC and the top-quintile spread against Qlib's label (close t+1 to close t+2) with Newey-West t, and Qlib's
TopkDropout backtest with the workflow's strategy and costs. The rule of kronos_qlib/evaluation/selection.py picks
among them against the incumbent declared below (H = 1, Qlib's label, linear), and the table and choice are
written to research/head_probe.json and research/head_probe.md before any test figure exists. Test is not read.
Hidden states and backtests are kept in --work, so a killed run resumes.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kronos_qlib.data import BarPanel, HeadSamples, head_samples
from kronos_qlib.evaluation import format_table, signal_metrics
from kronos_qlib.evaluation.backtest import backtest, book, excess_with_cost
from kronos_qlib.evaluation.selection import CRITERION, choose_signal
from kronos_qlib.files import atomic_write_text
from kronos_qlib.model.hub import weights_digest
from kronos_qlib.training.head import HeadConfig, evaluate, extract_states, train_probe

logger = logging.getLogger("research.head_probe")
HERE = Path(__file__).resolve().parent
#: candidates: (horizon H, hidden width; 0 = linear); the incumbent is declared before any run
HORIZONS = (1, 5, 10)
HIDDEN = (0, 64)
INCUMBENT = "H1 linear"


def name(horizon: int, hidden: int) -> str:
    return f"H{horizon} {'linear' if hidden == 0 else f'mlp{hidden}'}"


def fitted_model(provider: str, cache: Path):
    """The shipped workflow's KronosModel fitted as qrun fits it, its dataset and the rendered config."""
    import qlib
    from qlib.utils import init_instance_by_config

    from kronos_qlib.qrun import WORKFLOWS, load_workflow

    config = load_workflow(WORKFLOWS / "kronos_csi300.yaml", {"QLIB_DATA": str(Path(provider).resolve()),
                                                              "KRONOS_CACHE": str(cache)})
    qlib.init(**config["qlib_init"])
    dataset = init_instance_by_config(config["task"]["dataset"])
    model = init_instance_by_config(config["task"]["model"])
    model.fit(dataset)
    return model, dataset, config


def every_kth_day(samples: HeadSamples, k: int) -> HeadSamples:
    """The samples of every k-th trading day (whole days kept)."""
    days = np.unique(samples.days)[::k]
    keep = np.isin(samples.days, days)
    return HeadSamples(samples.starts[keep], samples.days[keep], samples.instruments[keep], samples.returns[keep],
                       samples.targets[keep])


def subset(samples: HeadSamples, base: HeadSamples) -> tuple[HeadSamples, np.ndarray]:
    """``samples`` restricted to the stock-days of ``base`` and the rows of ``base`` they are."""
    order = np.argsort(base.starts)
    pos = np.searchsorted(base.starts[order], samples.starts)
    found = (pos < len(order)) & (base.starts[order[np.minimum(pos, len(order) - 1)]] == samples.starts)
    keep = np.flatnonzero(found)
    picked = HeadSamples(samples.starts[keep], samples.days[keep], samples.instruments[keep], samples.returns[keep],
                         samples.targets[keep])
    return picked, order[pos[keep]]


def cached_states(path: Path, digest: str, compute) -> torch.Tensor:
    """Hidden states kept in ``path`` for the weights ``digest`` (computed and saved atomically otherwise)."""
    if path.exists():
        saved = torch.load(path)
        if saved["digest"] == digest:
            return saved["states"]
    states = compute()
    tmp = path.with_suffix(".tmp")
    torch.save({"digest": digest, "states": states}, tmp)
    os.replace(tmp, path)
    return states


def as_series(samples: HeadSamples, values: np.ndarray) -> pd.Series:
    index = pd.MultiIndex.from_arrays([pd.DatetimeIndex(samples.days), samples.instruments],
                                      names=["datetime", "instrument"])
    return pd.Series(values, index=index).sort_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider", default="../shared/cn_data")
    parser.add_argument("--work", type=Path, default=Path("outputs/head_probe"))
    parser.add_argument("--train-every", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=HERE, help="where the table, page and plot go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model, dataset, config = fitted_model(args.provider, work / "forecasts")
    segments = {s: tuple(pd.Timestamp(d) for d in dataset.segments[s]) for s in ("train", "valid")}
    handler = dataset.handler
    panel = BarPanel.from_frame(handler.bars(segments["valid"][1]))
    spec = model.forecast
    digest = weights_digest(model.tokenizer) + weights_digest(model.model)

    def samples_for(horizon: int) -> dict[str, HeadSamples]:
        out = {s: head_samples(panel, spec.lookback, horizon, *segments[s], handler.universe) for s in segments}
        out["train"] = every_kth_day(out["train"], args.train_every)
        return out

    base = samples_for(1)
    states = {split: cached_states(work / f"states_{split}_every{args.train_every}.pt", digest,
                                   lambda split=split: extract_states(model.tokenizer, model.model, panel, base[split],
                                                                      spec.lookback, spec.clip, pool=1, desc=split))
              for split in segments}
    start = time.perf_counter()  # the head's inference speed: one forward pass per stock-day, no sampling
    valid = base["valid"]
    timed = HeadSamples(valid.starts[:2048], valid.days[:2048], valid.instruments[:2048], valid.returns[:2048],
                        valid.targets[:2048])
    extract_states(model.tokenizer, model.model, panel, timed, spec.lookback, spec.clip, pool=1, desc="timing")
    speed = len(timed) / (time.perf_counter() - start)
    label = as_series(base["valid"], base["valid"].returns)  # Qlib's label: close t+1 to close t+2
    last_day = str(label.index.get_level_values(0).max().date())
    rows, excess, curves = {}, {}, {}
    for horizon in HORIZONS:
        samples = samples_for(horizon)
        picked, index = {}, {}
        for split in segments:
            picked[split], index[split] = subset(samples[split], base[split])
        for hidden in HIDDEN:
            key = name(horizon, hidden)
            head_config = HeadConfig(horizon=horizon, hidden=hidden, epochs=args.epochs)
            head, curves[key] = train_probe({s: states[s][index[s]] for s in segments}, picked, head_config)
            _, scores = evaluate(head, states["valid"], base["valid"], head_config.loss)
            score = as_series(base["valid"], scores)
            report_path = work / f"backtest_{key.replace(' ', '_')}.csv"
            report = backtest(score, config, str(segments["valid"][0].date()), last_day)
            atomic_write_text(report_path, report.to_csv())
            excess[key] = excess_with_cost(report)
            metrics = signal_metrics(score, label)
            kept = ("IC", "IC t", "RankIC", "RankIC t", "top quintile spread (daily)", "top quintile t")
            rows[key] = {"segment": "valid", **{m: metrics[m] for m in kept}, **book(report),
                         "best epoch": float(np.argmin([c["valid_loss"] for c in curves[key]]) + 1)}
            logger.info("%s: RankIC %.4f (t %.2f), %.2f bp/day with cost", key, metrics["RankIC"],
                        metrics["RankIC t"], rows[key][CRITERION] * 1e4)
    table = pd.DataFrame.from_dict(rows, orient="index")
    choice = choose_signal(table, excess, INCUMBENT, last_day)
    record = {"segments": {s: [str(d.date()) for d in v] for s, v in segments.items()},
              "train_every": args.train_every, "samples": {s: len(base[s]) for s in segments},
              "states_per_s": speed, "incumbent": INCUMBENT, "choice": choice.to_dict(),
              "valid": table.to_dict(orient="index"), "curves": curves}
    atomic_write_text(args.out / "head_probe.json", json.dumps(record, indent=1, default=float))
    atomic_write_text(args.out / "head_probe.md", report_page(table, choice, record))
    plot(excess, args.out / "head_probe.png")
    print(report_page(table, choice, record))


def report_page(table: pd.DataFrame, choice, record: dict) -> str:
    shown = table[["IC", "RankIC", "RankIC t", "excess with cost t", "IR with cost", "turnover (daily)",
                   "best epoch"]].copy()
    shown.insert(3, "excess with cost (bp/day)", table[CRITERION] * 1e4)
    return "\n".join([
        "# Frozen probe of the return head (valid only; written by `python -m research.head_probe`)", "",
        f"Generative checkpoint: the shipped workflow's CPU preset, train {record['segments']['train']}, valid "
        f"{record['segments']['valid']}. Head trained on the frozen predictor's last hidden state of every "
        f"{record['train_every']}-th train day ({record['samples']['train']} stock-days), per-day IC loss on "
        f"rank-normalized forward returns close t+1 -> close t+1+H; epoch kept by valid loss. Scored on all "
        f"{record['samples']['valid']} valid stock-days against Qlib's label (close t+1 -> t+2); the book is "
        "the workflow's TopkDropout 50/5 with its costs. Hidden states computed at "
        f"{record['states_per_s']:.0f} stock-days/s (one forward pass each, no sampling).", "",
        format_table(shown), "",
        f"Rule (kronos_qlib/evaluation/selection.py) against the incumbent {record['incumbent']}: chosen "
        f"**{choice.chosen}** ({choice.reason}).", ""])


def plot(excess: dict[str, pd.Series], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, series in excess.items():
        ax.plot(series.index, series.cumsum(), label=key)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(title="Frozen-probe heads on valid: cumulative excess with cost (TopkDropout 50/5)",
           ylabel="cumulative excess return")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
