"""An experiment script's ``--quick`` run, as a user runs it: its output and its results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# The search experiments' tests pass --workers 1: one search worker process and one training at a
# time. Under pytest-xdist the other core runs another test file, and a second worker process only
# adds its start-up (importing torch and effml: about 4.4 s of CPU) to each search.


def run_quick(name: str, out: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """Run ``experiments/NAME.py --quick --out OUT ARGS``; assert it succeeded; (stdout, results)."""
    proc = subprocess.run([sys.executable, str(EXPERIMENTS / f"{name}.py"), "--quick", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=900, cwd=EXPERIMENTS.parent,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout, json.loads((out / "results.json").read_text())
