"""The return head's variants on valid: which variant, horizon and head shape does the head workflow ship?

    python -m research.head_study choose [--provider ../shared/cn_data] [--work outputs/head_study]
    python -m research.head_study test   [--provider ../shared/cn_data] [--work outputs/head_study]

Run from the repository root. It fits the shipped path workflow's model as qrun does (workflows/kronos_csi300.yaml,
CPU preset; finished stages in runs/ are reused), then trains each candidate of CANDIDATES (declared below before
any run) as the head workflow's stage does (kronos_qlib.training.head.HeadStage): the frozen probe on the
predictor's cached hidden states, the joint variant (cross-entropy + head_weight x head loss) from the finished
generative predictor, the control (head loss only) from random weights. Each is scored on every VALID day: IC,
RankIC and the top-quintile spread against Qlib's label (close t+1 to close t+2) with Newey-West t, and Qlib's
TopkDropout backtest with the workflow's strategy and costs. Once every candidate is done, the rule of
research/selection.py picks among them against the incumbent (the probe at H = 1, Qlib's label,
linear), and the table and choice go to research/head_study.json and .md before any test figure exists; choose
does not read test. ``test`` then scores the recorded choice beside the control at its horizon (the same network
trained on the head loss alone from random weights: does generative pretraining help the head?) on every test
stock-day, both stages as choose trained them, with a paired daily test of the two, and adds that section to the
page. Every candidate's stage folder, scores and backtest are kept in --work: a killed run resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
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
from kronos_qlib.evaluation.backtest import CRITERION, backtest, book, excess_with_cost
from kronos_qlib.files import atomic_write_text
from kronos_qlib.inference.head import score_contexts
from kronos_qlib import Kronos
from kronos_qlib.model.hub import weights_digest
from kronos_qlib.model.return_head import ReturnHead
from kronos_qlib.training.head import HeadConfig, HeadStage, evaluate, extract_states

from kronos_qlib.evaluation import daily_ic, paired_difference
from research.results import machine, require_choice, update_section
from research.selection import choose_signal

logger = logging.getLogger("research.head_study")
HERE = Path(__file__).resolve().parent
#: The frozen probe trains in minutes on cached states: all of its grid. The joint and control variants train a
#: predictor (about 15 minutes each at the CPU preset on 2 cores): two epochs over every 20th train day, one day
#: per batch, the head an MLP (the probe's better shape at every horizon); the control gets the from-scratch
#: learning rate of the CPU preset, the joint one a finetuning rate. Declared before any run; run in this order.
PROBE = dict(variant="probe", day_stride=5, epochs=20)
NETWORK = dict(day_stride=20, epochs=2, days_per_batch=1, hidden=64)
CANDIDATES: dict[str, dict] = {
    **{f"probe H{h} {'linear' if w == 0 else f'mlp{w}'}": dict(PROBE, horizon=h, hidden=w)
       for h in (1, 5, 10) for w in (0, 64)},
    "joint H10 w1": dict(NETWORK, variant="joint", horizon=10, head_weight=1.0, predictor_lr=1e-4),
    "control H10": dict(NETWORK, variant="control", horizon=10, predictor_lr=1e-3),
    "joint H10 w10": dict(NETWORK, variant="joint", horizon=10, head_weight=10.0, predictor_lr=1e-4),
    "joint H1 w1": dict(NETWORK, variant="joint", horizon=1, head_weight=1.0, predictor_lr=1e-4),
    "control H1": dict(NETWORK, variant="control", horizon=1, predictor_lr=1e-3),
}
INCUMBENT = "probe H1 linear"


def fitted_model(provider: str, cache: Path, stages: Path | None = None):
    """The shipped path workflow's KronosModel fitted as qrun fits it (or, with ``stages``, holding that finished
    run's best tokenizer and predictor, through the workflow's own checkpoint path: no finetune), its dataset and
    the rendered config."""
    import qlib
    from qlib.utils import init_instance_by_config

    from kronos_qlib.qrun import WORKFLOWS, load_workflow

    config = load_workflow(WORKFLOWS / "kronos_csi300.yaml", {"QLIB_DATA": str(Path(provider).resolve()),
                                                              "KRONOS_CACHE": str(cache)})
    if stages is not None:
        kwargs = config["task"]["model"]["kwargs"]
        kwargs.update(finetune=None, tokenizer=str(stages / "tokenizer" / "best"),
                      predictor=str(stages / "predictor" / "best"))
    qlib.init(**config["qlib_init"])
    dataset = init_instance_by_config(config["task"]["dataset"])
    model = init_instance_by_config(config["task"]["model"])
    model.fit(dataset)
    return model, dataset, config


def subset(samples: HeadSamples, base: HeadSamples) -> tuple[HeadSamples, np.ndarray]:
    """``samples`` restricted to the stock-days of ``base`` and the rows of ``base`` they are."""
    order = np.argsort(base.starts)
    pos = np.searchsorted(base.starts[order], samples.starts)
    found = (pos < len(order)) & (base.starts[order[np.minimum(pos, len(order) - 1)]] == samples.starts)
    keep = np.flatnonzero(found)
    return samples.take(keep), order[pos[keep]]


def cached(path: Path, digest: str, compute):
    """What ``compute`` returns, kept in ``path`` for ``digest`` (the weights it depends on), saved atomically."""
    if path.exists():
        saved = torch.load(path, weights_only=False)
        if saved["digest"] == digest:
            return saved["value"]
    value = compute()
    tmp = path.with_suffix(".tmp")
    torch.save({"digest": digest, "value": value}, tmp)
    os.replace(tmp, path)
    return value


def as_series(samples: HeadSamples, values: np.ndarray) -> pd.Series:
    index = pd.MultiIndex.from_arrays([pd.DatetimeIndex(samples.days), samples.instruments],
                                      names=["datetime", "instrument"])
    return pd.Series(values, index=index).sort_index()


class Study:
    def __init__(self, model, dataset, work: Path):
        self.model, self.work = model, work
        self.segments = {s: tuple(pd.Timestamp(d) for d in dataset.segments[s]) for s in ("train", "valid")}
        self.test_segment = tuple(pd.Timestamp(d) for d in dataset.segments["test"])
        self.handler = dataset.handler
        self.panel = BarPanel.from_frame(self.handler.bars(self.segments["valid"][1]))
        self.spec = model.forecast
        self.digest = weights_digest(model.tokenizer) + weights_digest(model.model)
        self.base = self.samples(1, 1)  # every stock-day: what each candidate is scored on
        self.states = {split: cached(work / f"states_{split}.pt", self.digest, lambda split=split: extract_states(
            model.tokenizer, model.model, self.panel, self.base[split].every_kth_day(PROBE["day_stride"])
            if split == "train" else self.base[split], self.spec.lookback, self.spec.clip, pool=1, desc=split))
            for split in self.segments}

    def samples(self, horizon: int, stride: int) -> dict[str, HeadSamples]:
        return {s: head_samples(self.panel, self.spec.lookback, horizon, *self.segments[s], self.handler.universe)
                .every_kth_day(stride) for s in self.segments}

    def valid_scores(self, key: str, config: HeadConfig) -> np.ndarray:
        """The candidate's score of every valid stock-day (its stage trained, or reused, first)."""
        samples = self.samples(config.horizon, config.day_stride)
        states = None
        if config.variant == "probe":
            base = {"train": self.base["train"].every_kth_day(PROBE["day_stride"]), "valid": self.base["valid"]}
            states = {}
            for split in samples:
                samples[split], rows = subset(samples[split], base[split])
                states[split] = self.states[split][rows]
        stage = HeadStage(config, self.work / "heads" / key.replace(" ", "_"), self.model.tokenizer,
                          self.model.model, self.panel, samples, self.spec.lookback, self.spec.clip,
                          torch.device("cpu"), states=states)
        head, predictor = stage.run(resume=True)
        if config.variant == "probe":
            return evaluate(head, self.states["valid"], self.base["valid"], config.loss)[1]
        return cached(self.work / f"scores_{key.replace(' ', '_')}.pt", weights_digest(head) + weights_digest(
            predictor), lambda: score_contexts(self.model.tokenizer, predictor, head, self.panel,
                                               self.base["valid"].starts, self.spec.lookback, self.spec.clip))


    def test_scores(self, key: str, config: HeadConfig) -> tuple[HeadSamples, np.ndarray]:
        """Every test stock-day and the finished candidate's score of each: the weights choose trained, read from
        its stage folder as they are (never trained here), from contexts of a panel through the test segment's end,
        the forward returns inside it."""
        folder = self.work / "heads" / key.replace(" ", "_")
        if not (folder / "done.json").exists():
            raise SystemExit(f"{folder} holds no finished stage: run choose first")
        head = ReturnHead.from_pretrained(folder / "best")
        predictor = self.model.model if config.variant == "probe" else Kronos.from_pretrained(folder / "predictor")
        valid = self.work / f"scores_{key.replace(' ', '_')}.pt"
        if valid.exists() and torch.load(valid, weights_only=False)["digest"] != weights_digest(head) + \
                weights_digest(predictor):
            raise SystemExit(f"{folder} holds other weights than those choose scored on valid ({valid})")
        start, end = self.test_segment
        panel = BarPanel.from_frame(self.handler.bars(end))
        samples = head_samples(panel, self.spec.lookback, 1, start, end, self.handler.universe)
        if config.variant == "probe":
            states = cached(self.work / "states_test.pt", self.digest, lambda: extract_states(
                self.model.tokenizer, self.model.model, panel, samples, self.spec.lookback, self.spec.clip, pool=1,
                desc="test"))
            return samples, evaluate(head, states, samples, config.loss)[1]
        return samples, cached(self.work / f"test_scores_{key.replace(' ', '_')}.pt", weights_digest(head) +
                               weights_digest(predictor), lambda: score_contexts(
                                   self.model.tokenizer, predictor, head, panel, samples.starts, self.spec.lookback,
                                   self.spec.clip))


def scored_backtest(score: pd.Series, config: dict, start: str, end: str, path: Path) -> pd.DataFrame:
    """The workflow's TopkDropout backtest of ``score``, kept in ``path`` (a killed run resumes)."""
    if path.exists():
        return pd.read_csv(path, index_col=0, parse_dates=True)
    report = backtest(score, config, start, end)
    atomic_write_text(path, report.to_csv())
    return report


def open_study(args, test: bool = False) -> tuple[Study, dict]:
    """The study on the fitted model (or on ``--stages``); for test, only on the weights choose computed its
    states from, checked before anything is computed on them."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model, dataset, config = fitted_model(args.provider, work / "forecasts", args.stages)
    if test:
        digest = weights_digest(model.tokenizer) + weights_digest(model.model)
        chose_on = torch.load(work / "states_valid.pt", weights_only=False)["digest"]
        if chose_on != digest:
            raise SystemExit(f"{args.stages or 'the fitted workflow'} holds other weights than those choose used "
                             f"(weights digest {digest[:12]}..., choose's {chose_on[:12]}...): pass --stages the run "
                             "choose read")
    return Study(model, dataset, work), config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=("choose", "test"))
    parser.add_argument("--provider", default="../shared/cn_data")
    parser.add_argument("--work", type=Path, default=Path("outputs/head_study"))
    parser.add_argument("--out", type=Path, default=HERE, help="where the table, page and plot go")
    parser.add_argument("--stages", type=Path, default=None,
                        help="the finished run of the path workflow whose tokenizer/best and predictor/best to use "
                        "(default: fit the workflow as qrun does, reusing its finished stages)")
    args = parser.parse_args()
    choose(args) if args.phase == "choose" else test(args)


def choose(args) -> None:
    study, config = open_study(args)
    model, work = study.model, study.work
    valid = study.base["valid"]
    started = time.perf_counter()  # one forward pass per stock-day, no sampling
    timed = valid.take(np.arange(min(2048, len(valid))))
    extract_states(model.tokenizer, model.model, study.panel, timed, study.spec.lookback, study.spec.clip, pool=1,
                   desc="timing")
    speed = len(timed) / (time.perf_counter() - started)
    label = as_series(valid, valid.returns)  # Qlib's label: close t+1 to close t+2
    last_day = str(label.index.get_level_values(0).max().date())
    rows, excess, curves = {}, {}, {}
    for key, values in CANDIDATES.items():
        head_config = HeadConfig(**values)
        score = as_series(valid, study.valid_scores(key, head_config))
        report = scored_backtest(score, config, str(study.segments["valid"][0].date()), last_day,
                                 work / f"backtest_{key.replace(' ', '_')}.csv")
        excess[key] = excess_with_cost(report)
        metrics = signal_metrics(score, label)
        kept = ("IC", "IC t", "RankIC", "RankIC t", "top quintile spread (daily)", "top quintile t")
        curve = [json.loads(line) for line in
                 (work / "heads" / key.replace(" ", "_") / "metrics.jsonl").read_text().splitlines()]
        curves[key] = curve
        rows[key] = {"segment": "valid", **{m: metrics[m] for m in kept}, **book(report),
                     "best epoch": float(np.argmin([c["valid_loss"] for c in curve]) + 1)}
        logger.info("%s: RankIC %.4f (t %.2f), %.2f bp/day with cost", key, metrics["RankIC"], metrics["RankIC t"],
                    rows[key][CRITERION] * 1e4)
    table = pd.DataFrame.from_dict(rows, orient="index")
    choice = choose_signal(table, excess, INCUMBENT, last_day)
    record = {"segments": {s: [str(d.date()) for d in v] for s, v in study.segments.items()},
              "candidates": {k: dataclasses.asdict(HeadConfig(**v)) for k, v in CANDIDATES.items()},
              "valid_stock_days": len(valid), "states_per_s": speed, "incumbent": INCUMBENT,
              "choice": choice.to_dict(), "valid": table.to_dict(orient="index"), "curves": curves}
    atomic_write_text(args.out / "head_study.json", json.dumps(record, indent=1, default=float))
    atomic_write_text(args.out / "head_study.md", report_page(table, choice, record))
    plot(excess, args.out / "head_study.png")
    print(report_page(table, choice, record))


def test(args) -> None:
    """The recorded choice and the control at its horizon on test, with the paired daily test of the two."""
    record = json.loads(require_choice(args.out / "head_study.json", "python -m research.head_study").read_text())
    chosen = record["choice"]["chosen"]
    control = f"control H{CANDIDATES[chosen]['horizon']}"
    keys = [chosen] + ([control] if control != chosen else [])
    study, config = open_study(args, test=True)
    rows, rank_ic, excess = {}, {}, {}
    for key in keys:
        samples, values = study.test_scores(key, HeadConfig(**CANDIDATES[key]))
        score, label = as_series(samples, values), as_series(samples, samples.returns)
        last_day = str(label.index.get_level_values(0).max().date())
        report = scored_backtest(score, config, str(study.test_segment[0].date()), last_day,
                                 study.work / f"test_backtest_{key.replace(' ', '_')}.csv")
        metrics = signal_metrics(score, label)
        rank_ic[key], excess[key] = daily_ic(score, label, "spearman"), excess_with_cost(report)
        rows[key] = {"segment": "test", **{m: metrics[m] for m in ("IC", "IC t", "RankIC", "RankIC t")},
                     **book(report)}
        logger.info("%s on test: RankIC %.4f (t %.2f), %.2f bp/day with cost", key, metrics["RankIC"],
                    metrics["RankIC t"], rows[key][CRITERION] * 1e4)
    table = pd.DataFrame.from_dict(rows, orient="index")
    shown = table[["IC", "RankIC", "RankIC t", "excess with cost t", "IR with cost", "turnover (daily)"]].copy()
    shown.insert(3, "excess with cost (bp/day)", table[CRITERION] * 1e4)
    lines = ["## The choice and its control on test (`python -m research.head_study test`)", "",
             f"Test {study.test_segment[0].date()}..{study.test_segment[1].date()}, every stock-day, each stage as "
             f"choose trained it (one seed, the study's; the 3-seed figures of the shipped head are in "
             f"RESULTS.md \"Results over seeds\"). Machine: {machine()}.", "", format_table(shown), ""]
    record["test"] = table.to_dict(orient="index")
    if len(keys) == 2:
        paired = {"RankIC": paired_difference(rank_ic[chosen], rank_ic[control]),
                  "excess with cost (daily)": paired_difference(excess[chosen], excess[control])}
        record["test paired"] = {f"{chosen} minus {control}": paired}
        lines.append(f"{chosen} minus {control}, paired daily difference (Newey-West t): RankIC "
                     f"{paired['RankIC']['mean']:+.4f} (t {paired['RankIC']['t']:.2f}); excess with cost "
                     f"{paired['excess with cost (daily)']['mean'] * 1e4:+.2f} bp/day "
                     f"(t {paired['excess with cost (daily)']['t']:.2f}).")
    atomic_write_text(args.out / "head_study.json", json.dumps(record, indent=1, default=float))
    update_section("head-test", "\n".join(lines), args.out / "head_study.md")


def report_page(table: pd.DataFrame, choice, record: dict) -> str:
    shown = table[["IC", "RankIC", "RankIC t", "excess with cost t", "IR with cost", "turnover (daily)",
                   "best epoch"]].copy()
    shown.insert(3, "excess with cost (bp/day)", table[CRITERION] * 1e4)
    return "\n".join([
        "# The return head's variants on valid (written by `python -m research.head_study choose`)", "",
        f"Generative checkpoint: the shipped path workflow's CPU preset, train {record['segments']['train']}, valid "
        f"{record['segments']['valid']}. probe: the frozen predictor's last hidden state, the head trained on every "
        "5th train day for 20 epochs; joint (cross-entropy + w x head loss, from the generative predictor) and "
        "control (head loss only, from random weights): 2 epochs over every 20th train day, an MLP head. Target: "
        "per-day ranks of the return close t+1 -> close t+1+H, per-day IC loss; epoch kept by valid loss. Scored "
        f"on all {record['valid_stock_days']} valid stock-days against Qlib's label (close t+1 -> t+2); the book "
        "is the workflow's TopkDropout 50/5 with its costs. Hidden states at "
        f"{record['states_per_s']:.0f} stock-days/s on 2 CPU cores (one forward pass each, no sampling).", "",
        format_table(shown), "",
        f"Rule (research/selection.py) against the incumbent {record['incumbent']}: chosen "
        f"**{choice.chosen}** ({choice.reason}).", ""])


def plot(excess: dict[str, pd.Series], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for key, series in excess.items():
        ax.plot(series.index, series.cumsum(), label=key, lw=1.8 if not key.startswith("probe") else 1.0)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(title="Return heads on valid: cumulative excess with cost (TopkDropout 50/5)",
           ylabel="cumulative excess return")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
