"""The installed ``effml`` command run in a subprocess as a user runs it (one torch thread)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

EFFML = shutil.which("effml", path=str(Path(sys.executable).parent)) or shutil.which("effml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def effml(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``effml ARGS``; with ``check``, assert it succeeded (showing its output if not)."""
    assert EFFML, "the effml console script is not installed (pip install -e .)"
    out = subprocess.run([EFFML, *args], capture_output=True, text=True, env=ENV, timeout=600)
    if check:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


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
