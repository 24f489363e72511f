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
