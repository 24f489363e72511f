"""A small disk for the tests: a tmpfs of a given size mounted on a temporary folder, optionally
read-only, so that a full disk (ENOSPC) and a read-only file system (EROFS) are the real errors
of the kernel, not mocks (permissions cannot stand in: root ignores them). Mounting needs root;
elsewhere the tests that need it are skipped."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """``folder`` (created) as a tmpfs of ``size`` (e.g. '300k'), unmounted at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                          text=True, check=False) if os.geteuid() == 0 else None
    if proc is None or proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() if proc else 'not root'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill the disk of ``folder`` to the last byte; the file that fills it (delete it to free the disk)."""
    path = folder / "filler"
    with path.open("wb", buffering=0) as f:
        chunk = 1 << 16
        while chunk:  # unbuffered writes, halved when one no longer fits, down to one byte
            try:
                f.write(b"\0" * chunk)
            except OSError:
                chunk //= 2
    return path
