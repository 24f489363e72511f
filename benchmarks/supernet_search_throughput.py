"""How many candidates a search scores per hour with ``objective.accuracy: supernet``.

Trains a BigNAS supernet briefly on the embedded digits at 32 px (configs/bignas_digits.yaml,
``--steps`` steps; or takes ``--supernet RUN_DIR``: a BigNAS run, or a finished TuNAS search with
``--space`` its space), then runs ``effml search`` over its space as a
user would (``--workers`` x 1 thread, latency as MACs unless ``--latency measured``) and prints the
candidates scored (the study's and its random baseline's) per wall-clock hour and per CPU-hour
(user + system time of the search and its workers, start-up included), and per hour between the
first trial's start and the last one's end (steady state).

    PYTHONPATH=src python benchmarks/supernet_search_throughput.py --trials 300 --out /tmp/throughput
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` gives it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def effml(*args: str) -> tuple[float, float]:
    """Run ``effml ARGS`` to the end: (wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "effml", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--supernet", type=Path, help="a trained supernet run (default: train one briefly)")
    parser.add_argument("--steps", type=int, default=60, help="training steps of the brief supernet")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--strategy", default="evolution")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency", default="flops", choices=["flops", "measured"])
    parser.add_argument("--space", default="bignas", help="the supernet's space (a TuNAS search of the MnasNet "
                        "space: mnasnet)")
    parser.add_argument("--target", type=float, default=None,
                        help="T (default: 2 MMACs or 8 ms, for the bignas space at 32 px)")
    parser.add_argument("--holdout-images", type=int, default=None, help="objective.holdout_images")
    parser.add_argument("--calibration-batches", type=int, default=None, help="objective.calibration_batches")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    supernet = args.supernet
    if supernet is None:
        supernet = args.out / "supernet"
        if not (supernet / "run.json").is_file():
            effml("supernet", "train", str(ROOT / "configs" / "bignas_digits.yaml"), f"run.dir={supernet}",
                  f"train.max_steps={args.steps}", "train.threads=2", "--quiet")
    db = args.out / f"search_{args.strategy}_{args.latency}_{args.trials}.db"
    db.unlink(missing_ok=True)
    target = args.target or {"flops": 2.0, "measured": 8.0}[args.latency]
    config = {
        "search": {"space": args.space, "trials": args.trials, "strategy": args.strategy, "storage": str(db),
                   "study": "throughput", "workers": args.workers, "threads": 1},
        "objective": {"kind": "reward", "target": target, "latency": args.latency, "accuracy": "supernet",
                      "supernet": str(supernet.absolute()), "holdout_images": args.holdout_images,
                      "calibration_batches": args.calibration_batches},
    }
    path = args.out / "search.yaml"
    path.write_text(yaml.safe_dump(config))
    wall, cpu = effml("search", str(path))

    import optuna

    from effml.search.study.storage import load_study, study_exists

    trials = []
    for name in ("throughput", "throughput-random"):  # a random strategy has no baseline study
        if study_exists(str(db), name):
            trials += load_study(str(db), name).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    n = len(trials)
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    durations = sorted(t.user_attrs["duration_s"] for t in trials)
    # the workers' CPU as each trial measured it: a fork-server worker is not this process's child,
    # so the rusage above holds the driver (and fork server) only
    trial_cpu = sum(t.user_attrs["cpu_s"] for t in trials)
    cpu += trial_cpu
    result = {
        "cpu": cpu_name(), "space": args.space, "strategy": args.strategy, "latency": args.latency,
        "workers": args.workers, "holdout_images": args.holdout_images, "calibration_batches": args.calibration_batches,
        "candidates": n, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "trials_cpu_s": round(trial_cpu, 1),
        "per_wall_hour": round(n / wall * 3600), "per_cpu_hour": round(n / cpu * 3600),
        "steady_per_wall_hour": round(n / span * 3600), "median_trial_s": durations[len(durations) // 2],
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
