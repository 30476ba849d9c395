"""The resumable training state, written atomically so a crash never corrupts the last good checkpoint."""
from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_write


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temporary file renamed into place."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_state(path: Path) -> dict[str, Any]:
    """Loaded on the CPU (RNG states must be CPU tensors); load_state_dict moves tensors where they belong."""
    # weights_only=False: the file holds RNG states and numpy objects; it is our own, written by save_atomic.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0]}): the file "
                              f"is damaged (truncated, or not a training state); delete it to train this stage "
                              f"from its first epoch") from err
