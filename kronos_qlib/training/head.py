"""The head stage: a cross-sectional return head trained on whole days of stock-days, in three variants.

- ``probe``: tokenizer and predictor frozen; their hidden states are computed once per stock-day and only the
  head trains (minutes on 2 cores): does the generative representation hold cross-sectional information?
- ``joint``: predictor and head trained together on next-token cross-entropy + ``head_weight`` x head loss, from
  the finished generative predictor.
- ``control``: the same network from random weights, trained on the head loss alone: does the generative stage
  help the head?

The tokenizer is frozen in every variant. The epoch kept is the one with the best valid head loss; valid never
reaches test. The stage lives in a :class:`~kronos_qlib.training.stage_folder.StageFolder` like the generative
ones: ``best/`` holds the head, ``predictor/`` the predictor it reads (joint and control: trained here; probe:
none, the generative one), ``last.pt`` the state a killed run resumes from, ``metrics.jsonl`` the curve.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.cross_section import HeadSamples, day_batches
from ..data.windows import BarPanel
from ..errors import ConfigError
from ..files import atomic_write_text
from ..inference.head import contexts
from ..logs import progress_bar
from ..model import Kronos, KronosTokenizer, ReturnHead, context_states
from ..model.hub import init_arg_mismatch, random_origin, weights_digest
from .checkpoint import load_state, rng_state, save_atomic, set_rng_state
from .stage_folder import Plan, StageFolder

logger = logging.getLogger(__name__)

LOSSES = ("ic", "mse")
VARIANTS = ("probe", "joint", "control")


@dataclass
class HeadConfig:
    """The head and how it trains.

    ``loss``: ``ic`` (minus the per-day Pearson correlation of score and rank target) or ``mse`` (per-day mean
    squared error against it). ``day_stride``: the stage trains and picks its epoch on every k-th trading day of
    train and valid (neighbouring days' forward returns overlap, so little is lost). ``head_weight`` (joint only):
    the loss is cross-entropy + head_weight x head loss. ``predictor_lr``: the predictor's learning rate in the
    joint and control variants (``lr`` is the head's).
    """

    variant: str = "probe"
    horizon: int = 1
    loss: str = "ic"
    hidden: int = 0
    pool: int = 1
    dropout: float = 0.0
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    days_per_batch: int = 8
    day_stride: int = 5
    head_weight: float = 1.0
    predictor_lr: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"head variant must be one of {', '.join(VARIANTS)}, got '{self.variant}'")
        if self.loss not in LOSSES:
            raise ConfigError(f"head loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")
        for name in ("horizon", "pool", "epochs", "days_per_batch", "day_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"head {name} must be an integer >= 1, got {value!r}")

    @classmethod
    def build(cls, values: dict | HeadConfig | None, where: str) -> HeadConfig:
        """From a workflow's mapping, naming an unknown key."""
        if isinstance(values, cls):
            return values
        values = dict(values or {})
        unknown = init_arg_mismatch(cls, values)[1]
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {unknown}; known: "
                              f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**values)

    def folder_name(self) -> str:
        return f"head_{self.variant}_h{self.horizon}"


def day_loss(scores: torch.Tensor, targets: torch.Tensor, day_ids: torch.Tensor, loss: str) -> torch.Tensor:
    """The mean over the batch's days of each day's loss: the cross-section is the sample, so a day with many
    members weighs as much as one with few."""
    n_days = int(day_ids.max()) + 1

    def per_day(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_days, dtype=values.dtype, device=values.device).index_add_(0, day_ids, values)

    count = per_day(torch.ones_like(scores))
    if loss == "mse":
        return (per_day((scores - targets) ** 2) / count).mean()
    ds, dt = scores - (per_day(scores) / count)[day_ids], targets - (per_day(targets) / count)[day_ids]
    return -(per_day(ds * dt) / torch.sqrt(per_day(ds * ds) * per_day(dt * dt) + 1e-12)).mean()


def _day_ids(samples: HeadSamples, rows: np.ndarray) -> torch.Tensor:
    _, ids = np.unique(samples.days[rows], return_inverse=True)
    return torch.from_numpy(ids.astype(np.int64))


@torch.no_grad()
def extract_states(tokenizer: KronosTokenizer, predictor: Kronos, panel: BarPanel, samples: HeadSamples,
                   lookback: int, clip: float, pool: int, batch_size: int = 256, desc: str = "hidden states"
                   ) -> torch.Tensor:
    """(n, pool, d_model) hidden states of every sample's context, on the CPU."""
    tokenizer.eval(), predictor.eval()
    device = next(predictor.parameters()).device
    out = torch.empty(len(samples), pool, predictor.d_model)
    for i in tqdm(range(0, len(samples), batch_size), desc=desc, mininterval=10):
        rows = np.arange(i, min(i + batch_size, len(samples)))
        x, stamp = contexts(panel, samples.starts[rows], lookback, clip)
        out[rows] = context_states(tokenizer, predictor, x.to(device), stamp.to(device), pool).float().cpu()
    return out


def evaluate(head: ReturnHead, states: torch.Tensor, samples: HeadSamples, loss: str) -> tuple[float, np.ndarray]:
    """(mean day loss, scores) of a head over every sample's hidden states, in eval mode."""
    head.eval()
    device = next(head.parameters()).device
    with torch.no_grad():
        scores = torch.cat([head(states[i:i + 4096].to(device)).float().cpu() for i in range(0, len(samples), 4096)])
        value = day_loss(scores, torch.from_numpy(samples.targets), _day_ids(samples, np.arange(len(samples))),
                         loss)
    return float(value), scores.numpy()


def samples_digest(panel: BarPanel, samples: dict[str, HeadSamples]) -> str:
    """What the head stage trains on: the samples and the bars their contexts read (a provider that changed
    prices changes it, so a finished stage is not reused on other data)."""
    digest = hashlib.sha1(np.ascontiguousarray(panel.values, dtype=np.float64).tobytes())
    for split in sorted(samples):
        s = samples[split]
        for array in (s.starts, s.days.astype("datetime64[ns]").view(np.int64), s.targets):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


class HeadStage:
    """Trains (or reuses, or resumes) the head stage in ``folder`` on ``samples`` (``train`` / ``valid``, already
    thinned to every ``day_stride``-th day by the caller) and returns (head, predictor it reads)."""

    def __init__(self, config: HeadConfig, folder: str | Path, tokenizer: KronosTokenizer, predictor: Kronos,
                 panel: BarPanel, samples: dict[str, HeadSamples], lookback: int, clip: float,
                 device: torch.device, init_head: ReturnHead | None = None,
                 states: dict[str, torch.Tensor] | None = None):
        """``states``: the probe's frozen hidden states of ``samples``, when the caller has them (a study that
        trains several heads on one predictor); otherwise the probe computes them."""
        if states is not None and config.variant != "probe":
            raise ConfigError("precomputed hidden states fit the probe variant only (the others train the predictor)")
        self.config, self.folder = config, StageFolder(folder, "head")
        self.tokenizer = tokenizer.to(device).eval().requires_grad_(False)
        self.panel, self.samples, self.lookback, self.clip, self.device = panel, samples, lookback, clip, device
        torch.manual_seed(config.seed)
        if config.variant == "control":  # the same architecture, fresh weights
            predictor = type(predictor)(**predictor._hub_mixin_config)
            predictor.origin = random_origin(config.seed)
        self.predictor = (predictor if config.variant == "probe" else copy.deepcopy(predictor)).to(device)
        self.states = states
        self.head = (copy.deepcopy(init_head) if init_head is not None
                     else ReturnHead(predictor.d_model, config.hidden, config.pool, config.dropout)).to(device)
        if init_head is None:
            self.head.origin = random_origin(config.seed)
        self.settings = json.loads(json.dumps({
            "stage": "head", "head": dataclasses.asdict(config), "lookback": lookback, "clip": clip,
            "tokenizer": weights_digest(tokenizer), "predictor": weights_digest(predictor),
            "init_head": None if init_head is None else weights_digest(init_head),
            "data": samples_digest(panel, samples)}, default=str))
        self.start = {"tokenizer": tokenizer.origin, "predictor": predictor.origin, "head": self.head.origin}

    @property
    def trains_predictor(self) -> bool:
        return self.config.variant != "probe"

    def run(self, resume: bool = True) -> tuple[ReturnHead, Kronos]:
        folder = self.folder
        plan = folder.plan(self.settings, folder.finished_settings(), folder.in_progress(), skip_existing=True,
                           resume=resume)
        if plan is Plan.SKIP:
            logger.info("head stage reused: %s finished with the same settings", folder.path)
            return self._finished()
        if plan is Plan.FRESH:
            folder.start_fresh()
        self._fit()
        folder.finish(self.settings, self.start)
        return self._finished()

    def _finished(self) -> tuple[ReturnHead, Kronos]:
        head = ReturnHead.from_pretrained(self.folder.best)
        predictor = (Kronos.from_pretrained(self.folder.path / "predictor") if self.trains_predictor
                     else self.predictor)
        return head, predictor.eval()

    def _optimizer(self) -> torch.optim.Optimizer:
        groups = [{"params": self.head.parameters(), "lr": self.config.lr}]
        if self.trains_predictor:
            groups.append({"params": self.predictor.parameters(), "lr": self.config.predictor_lr})
        return torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)

    def _fit(self) -> None:
        config, folder = self.config, self.folder
        optimizer = self._optimizer()
        history: list[dict] = []
        if folder.last.exists():
            state = load_state(folder.last)
            self.head.load_state_dict(state["head"])
            if self.trains_predictor:
                self.predictor.load_state_dict(state["predictor"])
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            history = state["history"]
            logger.info("head stage: resumed from %s after epoch %d", folder.last, len(history))
        states = None if self.trains_predictor else self.states or self._frozen_states()
        best = min((row["valid_loss"] for row in history), default=float("inf"))
        for epoch in range(len(history), config.epochs):
            began = time.perf_counter()
            train_loss, head_loss = self._train_epoch(optimizer, epoch, states)
            valid_loss = self._valid_loss(states)
            if not np.isfinite(valid_loss):
                raise ConfigError(f"the head's valid loss is {valid_loss} at epoch {epoch + 1}: lower lr / "
                                  f"predictor_lr (the last good state is in {folder.last})")
            improved = valid_loss < best
            if improved:
                best = valid_loss
                self.head.save_pretrained(folder.best)
                if self.trains_predictor:
                    self.predictor.save_pretrained(folder.path / "predictor")
            history.append({"stage": "head", "epoch": epoch + 1, "train_loss": train_loss,
                            "train_head_loss": head_loss, "valid_loss": valid_loss, "best": improved,
                            "epoch_s": time.perf_counter() - began})
            save_atomic({"head": self.head.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                         "history": history, "settings": self.settings,
                         **({"predictor": self.predictor.state_dict()} if self.trains_predictor else {})}, folder.last)
            atomic_write_text(folder.metrics, "".join(json.dumps(row) + "\n" for row in history))
            logger.info("head %s H%d epoch %d/%d: train %.5f (head %.5f), valid head loss %.5f%s", config.variant,
                        config.horizon, epoch + 1, config.epochs, train_loss, head_loss, valid_loss,
                        " (best)" if improved else "")

    def _frozen_states(self) -> dict[str, torch.Tensor]:
        return {split: extract_states(self.tokenizer, self.predictor, self.panel, samples, self.lookback, self.clip,
                                      self.config.pool, desc=f"hidden states ({split})")
                for split, samples in self.samples.items()}

    def _states(self, samples: HeadSamples, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states of the last ``pool`` positions, next-token loss or None) of the rows' contexts."""
        x, stamp = contexts(self.panel, samples.starts[rows], self.lookback, self.clip)
        x, stamp = x.to(self.device), stamp.to(self.device)
        with torch.no_grad():
            s1, s2 = self.tokenizer.encode(x, half=True)
        if self.config.variant == "joint":
            ce, hidden = self.predictor.next_token_loss_and_states(s1, s2, stamp)
        else:
            ce, hidden = None, self.predictor.hidden_states(s1, s2, stamp)
        return hidden[:, -self.config.pool:], ce

    def _train_epoch(self, optimizer: torch.optim.Optimizer, epoch: int, states: dict[str, torch.Tensor] | None
                     ) -> tuple[float, float]:
        """Mean (loss, head loss) over the epoch's batches of whole days."""
        config, train = self.config, self.samples["train"]
        targets = torch.from_numpy(train.targets)
        self.head.train(), self.predictor.train(self.trains_predictor)
        losses = []
        batches = list(day_batches(train, config.days_per_batch, seed=config.seed * 1000 + epoch))
        # a bar where batches are slow (the predictor trains); the probe's epoch takes a moment
        for rows in progress_bar(batches, desc=f"head epoch {epoch + 1}", leave=False, disable=states is not None):
            hidden, ce = (states["train"][rows].to(self.device), None) if states else self._states(train, rows)
            head_loss = day_loss(self.head(hidden).float(), targets[rows].to(self.device),
                                 _day_ids(train, rows).to(self.device), config.loss)
            loss = head_loss if ce is None else ce + config.head_weight * head_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append((loss.item(), head_loss.item()))
        return tuple(float(v) for v in np.mean(losses, axis=0))

    def _valid_loss(self, states: dict[str, torch.Tensor] | None) -> float:
        valid = self.samples["valid"]
        if states is None:
            self.predictor.eval()
            with torch.no_grad():
                states = {"valid": torch.cat([self._states(valid, rows)[0].float().cpu()
                                              for rows in np.array_split(np.arange(len(valid)),
                                                                         max(1, len(valid) // 256))])}
        return evaluate(self.head, states["valid"], valid, self.config.loss)[0]
