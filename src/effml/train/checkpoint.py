"""Training checkpoints: complete state, written atomically, read without unpickling code."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from effml.errors import EffmlError
from effml.files import atomic_write_bytes

CHECKPOINT_NAME = "last.pt"


class CheckpointError(EffmlError):
    """A checkpoint is missing, unreadable or does not fit this run."""


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (torch CPU and CUDA, Python)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_initialized():  # only a run that used CUDA (asking for devices may warn on a CPU machine)
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically."""
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint (``weights_only``: tensors and plain data, never code)."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; a run directory has checkpoints/{CHECKPOINT_NAME} "
                              f"once it has trained for one checkpoint interval")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
