"""The ``effml`` command run as a user runs it, in a fresh process with one torch thread: forked
from a fork server that imported effml once (``run_effml``), or the installed console script
(``EFFML``, for the tests that kill it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

EFFML = shutil.which("effml", path=str(Path(sys.executable).parent)) or shutil.which("effml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def effml(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``effml ARGS``; with ``check``, assert it succeeded (showing its output if not)."""
    out = run_effml(args, timeout=600)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def run_effml(args: Sequence[str | Path], *, cwd: Path | str | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """``effml ARGS`` in a fresh process, as ``subprocess.run([effml, ...], capture_output=True,
    text=True)`` runs it (this environment, one torch thread, ``cwd``), but forked from a fork server
    that imported effml once (``effml.cli.forked``). ``tests/test_train.py`` runs the installed
    console script."""
    import tempfile

    from effml.cli.forked import run_forked

    assert EFFML, "the effml console script is not installed (pip install -e .)"
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        code = run_forked(args, out, err, cwd=cwd, timeout=timeout)
        return subprocess.CompletedProcess(["effml", *map(str, args)], code, out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))


def kill_when(cmd: list[str], path: Path, timeout: float = 300.0, **popen: object) -> subprocess.Popen:
    """Start ``cmd``, SIGKILL it as soon as ``path`` exists (or it ends, or ``timeout`` passes) and
    return the finished process (its returncode says whether the kill hit)."""
    import signal
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen)
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc
