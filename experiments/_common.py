"""What the experiments share: training runs as subprocesses (one torch thread, reused when finished),
their scores and minutes, mean (min-max) summaries and writing figures.

Not an experiment itself; each ``experiments/NAME.py`` imports it (Python puts the script's folder
on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from effml.train.run_dir import shipped_metrics

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], log: Path) -> float:
    """Run a command (one torch thread), its output to ``log``; its wall minutes. An ``effml``
    command (``effml(...)``) runs forked from a fork server that imported effml once
    (``effml.cli.forked``: no new interpreter importing torch again); any other in a subprocess."""
    start = time.perf_counter()
    if cmd[:3] == effml():
        from effml.cli.forked import run_forked

        code = run_forked(cmd[3:], log)
    else:
        with open(log, "w") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    if code:
        raise SystemExit(f"{' '.join(map(str, cmd[:5]))} ... failed (exit {code}): see {log}")
    return (time.perf_counter() - start) / 60


def effml(*args: str) -> list[str]:
    """The command line of ``effml ARGS`` in this interpreter."""
    return [sys.executable, "-m", "effml", *map(str, args)]


def train(config: Path | str, overrides: list[str], run_dir: Path) -> Path:
    """``effml train CONFIG OVERRIDES run.dir=RUN_DIR`` (log beside the run directory), reused when
    ``run_dir`` holds a finished run and resumed when it holds an unfinished one."""
    if not (run_dir / "run.json").is_file():
        if run_dir.exists():
            cmd = effml("train", "--resume", run_dir)
        else:
            cmd = effml("train", config, *overrides, "train.threads=1", f"run.dir={run_dir}")
        run(cmd, run_dir.with_name(run_dir.name + ".log"))
    return run_dir


def run_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


def shipped_top1(run_dir: Path, metric: str = "top1") -> float:
    """Val top-1 (or another val ``metric``, e.g. a detector's AP50), in percent, of the weights a
    finished run ships (its EMA weights where it kept them; an older detection run's fractions x100)."""
    return shipped_metrics(run_record(run_dir))[metric]


def minutes(run_dir: Path) -> float:
    """A finished run's training minutes from its metrics (the last row's session clock)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["session_s"] / 60


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict[str, float], digits: int = 2) -> str:
    """'mean (min-max)'."""
    return f"{s['mean']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from effml.files import atomic_write_bytes

    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def write_json(path: Path, data: Any) -> None:
    from effml.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2))


def publish(out: Path, results: dict[str, Any], png: str, plot: Any, print_tables: Any, also: str = "") -> None:
    """Write ``results.json`` and the plot ``png`` to ``out``, print the tables, then what was
    written (``also``: the other files, e.g. the specs)."""
    write_json(out / "results.json", results)
    plot(results, out / png)
    print_tables(results)
    print(f"wrote {out / 'results.json'}, {out / png}{f' and {also}' if also else ''}")
