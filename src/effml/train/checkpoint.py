"""Training checkpoints: complete state, written atomically, read without unpickling code."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from effml.data.files import os_error
from effml.errors import EffmlError
from effml.models.weights import new_file_mode

CHECKPOINT_NAME = "last.pt"


class CheckpointError(EffmlError):
    """A checkpoint is missing, unreadable or does not fit this run."""


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never a truncated one. The
    file gets the mode the umask gives a new file (``mkstemp`` would leave it 0600).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise os_error(err, "write", path) from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), new_file_mode())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):  # a full disk, a read-only folder: say so, naming the file
            raise os_error(err, "write", path, f"the previous {path.name} (if any) is intact") from err
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (see ``atomic_write_bytes``)."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (torch CPU and CUDA, Python)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
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
