"""Training a cross-sectional return head on whole days of stock-days.

The frozen probe asks whether the generative representation holds cross-sectional information at all: the
predictor and tokenizer do not change, so their hidden states are computed once per stock-day and only the head
trains on them (minutes on 2 cores). The epoch kept is the one with the best valid loss; valid never reaches
test, and test is never seen here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..data.cross_section import HeadSamples, day_batches
from ..data.windows import BarPanel
from ..errors import ConfigError
from ..features import normalize
from ..model import Kronos, KronosTokenizer, ReturnHead, context_states

logger = logging.getLogger(__name__)

LOSSES = ("ic", "mse")


@dataclass
class HeadConfig:
    """The head and how it trains. ``loss``: ``ic`` (minus the per-day Pearson correlation of score and rank
    target) or ``mse`` (per-day mean squared error against the rank target)."""

    horizon: int = 5
    loss: str = "ic"
    hidden: int = 0
    pool: int = 1
    dropout: float = 0.0
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-4
    days_per_batch: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ConfigError(f"head loss must be one of {', '.join(LOSSES)}, got '{self.loss}'")


def day_loss(scores: torch.Tensor, targets: torch.Tensor, day_ids: torch.Tensor, loss: str) -> torch.Tensor:
    """The mean over the batch's days of each day's loss: the cross-section is the sample, so a day with many
    members weighs as much as one with few."""
    n_days = int(day_ids.max()) + 1
    count = torch.zeros(n_days).index_add_(0, day_ids, torch.ones_like(scores))
    if loss == "mse":
        return (torch.zeros(n_days).index_add_(0, day_ids, (scores - targets) ** 2) / count).mean()
    mean_s = torch.zeros(n_days).index_add_(0, day_ids, scores) / count
    mean_t = torch.zeros(n_days).index_add_(0, day_ids, targets) / count
    ds, dt = scores - mean_s[day_ids], targets - mean_t[day_ids]
    cov = torch.zeros(n_days).index_add_(0, day_ids, ds * dt)
    var_s = torch.zeros(n_days).index_add_(0, day_ids, ds * ds)
    var_t = torch.zeros(n_days).index_add_(0, day_ids, dt * dt)
    return -(cov / torch.sqrt(var_s * var_t + 1e-12)).mean()


def _day_ids(samples: HeadSamples, rows: np.ndarray) -> torch.Tensor:
    _, ids = np.unique(samples.days[rows], return_inverse=True)
    return torch.from_numpy(ids.astype(np.int64))


@torch.no_grad()
def extract_states(tokenizer: KronosTokenizer, predictor: Kronos, panel: BarPanel, samples: HeadSamples,
                   lookback: int, clip: float, pool: int, batch_size: int = 256, desc: str = "hidden states"
                   ) -> torch.Tensor:
    """(n, pool, d_model) hidden states of every sample's context, normalized as the windows are."""
    tokenizer.eval(), predictor.eval()
    out = torch.empty(len(samples), pool, predictor.d_model)
    offsets = np.arange(lookback)
    for i in tqdm(range(0, len(samples), batch_size), desc=desc, mininterval=10):
        rows = samples.starts[i:i + batch_size, None] + offsets
        x = np.stack([normalize(panel.values[r], clip)[0] for r in rows])
        out[i:i + len(rows)] = context_states(tokenizer, predictor, torch.from_numpy(x),
                                              torch.from_numpy(panel.stamps[rows]), pool)
    return out


def evaluate(head: ReturnHead, states: torch.Tensor, samples: HeadSamples, loss: str) -> tuple[float, np.ndarray]:
    """(mean day loss, scores) of a head over every sample, in eval mode."""
    head.eval()
    with torch.no_grad():
        scores = torch.cat([head(states[i:i + 4096]) for i in range(0, len(samples), 4096)])
        value = day_loss(scores, torch.from_numpy(samples.targets), _day_ids(samples, np.arange(len(samples))),
                         loss)
    return float(value), scores.numpy()


def train_probe(states: dict[str, torch.Tensor], samples: dict[str, HeadSamples], config: HeadConfig
                ) -> tuple[ReturnHead, list[dict]]:
    """Train a head on frozen hidden states (``train`` and ``valid`` keys); returns the head of the best valid
    epoch and the per-epoch curve."""
    torch.manual_seed(config.seed)
    head = ReturnHead(states["train"].shape[-1], config.hidden, config.pool, config.dropout)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train, targets = samples["train"], torch.from_numpy(samples["train"].targets)
    best, best_state, curve = float("inf"), None, []
    for epoch in range(config.epochs):
        head.train()
        losses = []
        for rows in day_batches(train, config.days_per_batch, seed=config.seed * 1000 + epoch):
            value = day_loss(head(states["train"][rows]), targets[rows], _day_ids(train, rows), config.loss)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            losses.append(value.item())
        valid_loss, _ = evaluate(head, states["valid"], samples["valid"], config.loss)
        curve.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "valid_loss": valid_loss})
        logger.info("head epoch %d/%d: train %.5f, valid %.5f", epoch + 1, config.epochs, curve[-1]["train_loss"],
                    valid_loss)
        if valid_loss < best:
            best, best_state = valid_loss, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    return head.eval(), curve
