"""A cross-sectional return head on the predictor's hidden states: one score per stock-day, no sampling.

Next-token cross-entropy trains the predictor to describe a series' next bar, not to rank stocks against each
other; the paths' location, which every path signal reads, is mostly noise. The head reads the same
representation and is trained on what a TopkDropout book earns from: the cross-section of forward returns.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import KronosInputError
from .hub import HubModelMixin
from .predictor import Kronos
from .tokenizer import KronosTokenizer


class ReturnHead(nn.Module, HubModelMixin):
    """Score from the final (normed) hidden states of the last ``pool`` context positions, averaged.

    ``hidden=0`` is a linear head; otherwise one hidden layer of that width (GELU). Saved and loaded in the Hub
    layout like the networks it sits on (``save_pretrained`` / ``from_pretrained``).
    """

    def __init__(self, d_model: int, hidden: int = 0, pool: int = 1, dropout: float = 0.0):
        super().__init__()
        if pool < 1:
            raise KronosInputError(f"ReturnHead pool must be >= 1, got {pool}")
        self.d_model, self.pool = d_model, pool
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1)]
        else:
            layers.append(nn.Linear(d_model, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(batch, positions >= pool, d_model) hidden states -> (batch,) scores."""
        if states.ndim != 3 or states.shape[-1] != self.d_model or states.shape[1] < self.pool:
            raise KronosInputError(f"ReturnHead expects hidden states (batch, >= {self.pool}, {self.d_model}), "
                                   f"got {tuple(states.shape)}")
        return self.net(states[:, -self.pool:].mean(dim=1)).squeeze(-1)


def context_states(tokenizer: KronosTokenizer, predictor: Kronos, x: torch.Tensor, stamp: torch.Tensor,
                   pool: int) -> torch.Tensor:
    """The predictor's final hidden states of the last ``pool`` positions of normalized contexts ``x``
    (batch, lookback, 6) with time features ``stamp``: what the head reads. Gradients flow unless the caller
    disables them (the joint and control variants train through this)."""
    with torch.no_grad():  # the tokenizer is frozen in every variant, as in the predictor stage
        s1, s2 = tokenizer.encode(x, half=True)
    return predictor.hidden_states(s1, s2, stamp)[:, -pool:]
