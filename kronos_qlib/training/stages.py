"""The two finetuning objectives, each a function of a batch of normalized windows."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..model import Kronos, KronosTokenizer

Losses = dict[str, torch.Tensor]


@dataclass
class Stage:
    """What the generic loop needs to know about a stage: the trainable model and its losses.

    ``compute(model, x, stamp)`` returns the scalars named in ``metrics``; "loss" is optimized and
    ``select_on`` picks the best checkpoint on the validation split. ``start`` names the weights of the networks
    it reads as they were when it started (their ``origin``), for done.json.
    """

    name: str
    model: nn.Module
    compute: Callable[[nn.Module, torch.Tensor, torch.Tensor], Losses]
    metrics: tuple[str, ...]
    select_on: str = "loss"
    start: dict = field(default_factory=dict)


def tokenizer_stage(tokenizer: KronosTokenizer) -> Stage:
    """Reconstruction: (MSE of the s1-half reconstruction + MSE of the full one + quantizer loss) / 2."""

    def compute(model: nn.Module, x: torch.Tensor, stamp: torch.Tensor) -> Losses:
        (recon_s1, recon), bsq_loss, _, _ = model(x)
        mse_s1, mse_full = F.mse_loss(recon_s1.float(), x), F.mse_loss(recon.float(), x)
        return {"loss": (mse_s1 + mse_full + bsq_loss) / 2, "recon_s1": mse_s1, "recon": mse_full,
                "bsq": bsq_loss}

    return Stage("tokenizer", tokenizer, compute, ("loss", "recon_s1", "recon", "bsq"), select_on="recon",
                 start={"tokenizer": tokenizer.origin})


def predictor_stage(predictor: Kronos, tokenizer: KronosTokenizer, teacher_forcing: bool = True) -> Stage:
    """Next-token cross-entropy on tokens from the frozen tokenizer (eval mode, no gradients)."""
    tokenizer.eval().requires_grad_(False)

    def compute(model: nn.Module, x: torch.Tensor, stamp: torch.Tensor) -> Losses:
        with torch.no_grad():
            s1, s2 = tokenizer.encode(x, half=True)
        s1_logits, s2_logits = model(s1[:, :-1], s2[:, :-1], stamp[:, :-1], use_teacher_forcing=teacher_forcing,
                                     s1_targets=s1[:, 1:])
        loss, ce_s1, ce_s2 = predictor.compute_loss(s1_logits, s2_logits, s1[:, 1:], s2[:, 1:])
        return {"loss": loss, "s1": ce_s1, "s2": ce_s2}

    return Stage("predictor", predictor, compute, ("loss", "s1", "s2"),
                 start={"predictor": predictor.origin, "tokenizer": tokenizer.origin})
