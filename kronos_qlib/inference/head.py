"""Scoring stock-days with a return head: one forward pass over each context, no sampling."""
from __future__ import annotations

import numpy as np
import torch

from ..data.windows import BarPanel
from ..features import normalize
from ..logs import progress_bar
from ..model import Kronos, KronosTokenizer, ReturnHead, context_states


def contexts(panel: BarPanel, starts: np.ndarray, lookback: int, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized contexts (len(starts), lookback, 6) from panel rows ``starts`` on, and their time features,
    normalized as the training windows are (each by its own statistics, so nothing after its last bar)."""
    bars = np.asarray(starts)[:, None] + np.arange(lookback)
    x = np.stack([normalize(panel.values[r], clip)[0] for r in bars])
    return torch.from_numpy(x), torch.from_numpy(panel.stamps[bars])


@torch.no_grad()
def score_contexts(tokenizer: KronosTokenizer, predictor: Kronos, head: ReturnHead, panel: BarPanel,
                   starts: np.ndarray, lookback: int, clip: float, batch_size: int = 256,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """The head's score of every context (panel rows ``starts`` .. + lookback), batched across stocks and days."""
    nets = [net.to(device).eval() for net in (tokenizer, predictor, head)]
    out = np.empty(len(starts))
    with progress_bar(total=len(starts), desc="Kronos head scores", unit="stock-day") as bar:
        for i in range(0, len(starts), batch_size):
            x, stamp = contexts(panel, starts[i:i + batch_size], lookback, clip)
            states = context_states(nets[0], nets[1], x.to(device), stamp.to(device), head.pool)
            out[i:i + len(x)] = head(states).float().cpu().numpy()
            bar.update(len(x))
    return out
