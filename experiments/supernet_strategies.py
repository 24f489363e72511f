"""Search strategies at scale on one trained supernet: random search, regularized evolution, TPE and
REINFORCE, each given ``--trials`` samples scored as children of the supernet
(``objective.accuracy: supernet``: no training per sample), over ``--seeds`` seeds.

With a proxy training per sample a search sees a few dozen networks, too few to tell the
strategies apart (the MnasNet experiment). Scored by a supernet, a sample costs about a second, so
each strategy gets hundreds of samples and several seeds, as on NAS-Bench-101, where regularized
evolution's best beats random search's after about 150 evaluations (Real et al., arXiv 1802.01548;
Ying et al., arXiv 1902.09635, figure 7).

- the supernet: ``--supernet`` (default: seed 0's TuNAS search of ``experiments/tunas_search.py``,
  the MnasNet space on Fashion-MNIST at 32 px; or a BigNAS run of ``effml supernet train``);
- the reward: MnasNet's soft reward ACC * (MACs / T)^-0.07 at T = ``--target`` MMACs (default:
  the TuNAS search's T0); ACC is the held-out top-1 of the child (the first ``--holdout-images``
  held-out images, BN re-estimated on ``--calibration-batches`` training batches);
- per strategy and seed one study (``search.baseline: off``: random search is one of the
  strategies); the best reward after each sample; the median best over seeds and its range; and
  whether a strategy's median best is above every random seed's best (beyond random's spread).
  Samples per hour are wall-clock with ``--workers`` workers (the CPU-hour figure is
  ``benchmarks/supernet_search_throughput.py``'s).

Writes ``results.json`` and ``supernet_strategies.png`` (median best-so-far reward against samples)
to ``--out``, and the studies (``effml search report OUT/evolution_s0.db``); a rerun continues
unfinished studies. ``--quick``: a BigNAS supernet briefly trained on the digits, 12 samples x 2
seeds (CI).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import ROOT, effml, publish, run, save_figure

STRATEGIES = ("random", "evolution", "tpe", "reinforce")
TUNAS_RUN = ROOT / "runs" / "experiment_tunas" / "tunas_s0"


def quick_supernet(out: Path) -> Path:
    """A BigNAS supernet of the digits, trained for a few steps (the smoke run's evaluator)."""
    run_dir = out / "bignas"
    if not (run_dir / "run.json").is_file():
        run(effml("supernet", "train", ROOT / "configs" / "bignas_digits.yaml", f"run.dir={run_dir}",
                  "train.max_steps=6", "train.epochs=1", "supernet.calibration_batches=2", "train.threads=1",
                  "--quiet"), out / "bignas.log")
    return run_dir


def study_config(args: argparse.Namespace, strategy: str, seed: int, space: str, target: float) -> Any:
    """The search config of one study: ``strategy`` at ``seed``, scored by the supernet."""
    from effml.search.study.config import load_search_config

    return load_search_config(None, [
        f"search.space={space}", f"search.strategy={strategy}", f"search.seed={seed}", f"search.trials={args.trials}",
        f"search.storage={args.out / f'{strategy}_s{seed}.db'}", f"search.study={strategy}_s{seed}",
        f"search.workers={args.workers}", "search.threads=1", "search.baseline=off",
        "objective.kind=reward", f"objective.target={target}", "objective.constraint=soft", "objective.latency=flops",
        "objective.accuracy=supernet", f"objective.supernet={args.supernet}",
        f"objective.holdout_images={args.holdout_images}", f"objective.calibration_batches={args.calibration_batches}"])


def run_study(cfg: Any) -> dict[str, Any]:
    """Run (or continue) one study; its rewards in trial order and the wall seconds of this run."""
    from effml.search.study.config import build_space
    from effml.search.study.runner import run_search
    from effml.search.study.storage import finished_trials

    start = time.perf_counter()
    db = Path(cfg.search.storage)
    result = run_search(cfg, build_space(cfg), resume=db.is_file(), echo=lambda line: None)
    trials = sorted((t for t in finished_trials(result.study) if t.values is not None), key=lambda t: t.number)
    best = max(trials, key=lambda t: t.values[0])
    return {"rewards": [t.values[0] for t in trials], "best": best.values[0],
            "best_accuracy": best.user_attrs["metrics"]["accuracy"], "best_mmacs": best.user_attrs["metrics"]["macs"] / 1e6,
            "wall_s": time.perf_counter() - start}


def summary(bests: list[float]) -> dict[str, float]:
    """Median, min and max of the seeds' best rewards."""
    return {"median": statistics.median(bests), "min": min(bests), "max": max(bests), "n": len(bests)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--supernet", type=Path, default=None, help=f"a trained supernet run (default: {TUNAS_RUN})")
    p.add_argument("--target", type=float, default=None, help="T in MMACs (default: the TuNAS search's T0)")
    p.add_argument("--trials", type=int, default=None, help="samples per study (default 500; --quick 12)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds per strategy (default 0-4; --quick 0 1)")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--holdout-images", type=int, default=1000)
    p.add_argument("--calibration-batches", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "experiment_supernet_strategies")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (CI)")
    args = p.parse_args(argv)
    args.out = args.out.absolute()
    args.out.mkdir(parents=True, exist_ok=True)
    args.trials = args.trials or (12 if args.quick else 500)
    args.seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2, 3, 4])
    if args.quick:
        args.supernet = args.supernet or quick_supernet(args.out)
        args.target = args.target or 2.0
    args.supernet = (args.supernet or TUNAS_RUN).absolute()

    from effml.search.oneshot.tunas import SEARCH_YAML, is_tunas_run
    from effml.search.study.config import load_search_config
    from effml.search.study.supernet_proxy import supernet_accuracy

    if args.target is None:
        if not is_tunas_run(args.supernet):
            raise SystemExit(f"--target is needed: {args.supernet} is not a finished TuNAS search")
        args.target = load_search_config(args.supernet / SEARCH_YAML).objective.target
    probe = load_search_config(None, ["objective.accuracy=supernet", f"objective.supernet={args.supernet}"])
    space = supernet_accuracy(probe).space.name

    runs: dict[str, list[dict[str, Any]]] = {}
    for strategy in args.strategies:
        for seed in args.seeds:
            r = run_study(study_config(args, strategy, seed, space, args.target))
            runs.setdefault(strategy, []).append({"seed": seed, **r})
            print(f"{strategy} seed {seed}: best reward {r['best']:.4f} (top-1 {100 * r['best_accuracy']:.1f}%, "
                  f"{r['best_mmacs']:.2f} MMACs) after {len(r['rewards'])} samples; {r['wall_s'] / 60:.1f} min",
                  flush=True)
    samples = sum(len(r["rewards"]) for rs in runs.values() for r in rs)
    wall_s = sum(r["wall_s"] for rs in runs.values() for r in rs)
    results = {
        "supernet": str(args.supernet), "space": space, "target_mmacs": args.target, "trials": args.trials,
        "seeds": args.seeds, "holdout_images": args.holdout_images, "calibration_batches": args.calibration_batches,
        "quick": args.quick, "runs": runs,
        "best": {s: summary([r["best"] for r in rs]) for s, rs in runs.items()},
        "workers": args.workers, "samples_per_hour": samples / (wall_s / 3600) if wall_s else None,
    }
    if "random" in runs:
        top = results["best"]["random"]["max"]
        results["above_every_random_seed"] = {s: results["best"][s]["median"] > top for s in runs if s != "random"}
    publish(args.out, results, "supernet_strategies.png", plot, print_tables)
    return 0


def print_tables(results: dict[str, Any]) -> None:
    print(f"{results['trials']} samples per study, seeds {results['seeds']}; best reward, median (min-max) over seeds:")
    for s, b in results["best"].items():
        above = results.get("above_every_random_seed", {}).get(s)
        note = "" if above is None else ("  (median above every random seed's best)" if above
                                         else "  (not above random search's seed spread)")
        print(f"  {s:10s} {b['median']:.4f} ({b['min']:.4f}-{b['max']:.4f}){note}")
    if results["samples_per_hour"]:
        print(f"{results['samples_per_hour']:.0f} samples an hour with {results['workers']} workers (a study resumed "
              f"from its storage counts only this run's time)")


def plot(results: dict[str, Any], path: Path) -> None:
    """Median best-so-far reward against samples, per strategy (the seeds' range shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s, rs in results["runs"].items():
        n = min(len(r["rewards"]) for r in rs)
        curves = np.array([np.maximum.accumulate(r["rewards"][:n]) for r in rs])
        x = np.arange(1, n + 1)
        ax.plot(x, np.median(curves, axis=0), label=s)
        ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), alpha=0.15)
    ax.set(xlabel="samples", ylabel="best reward so far", title=f"{results['space']} supernet, T = "
           f"{results['target_mmacs']} MMACs, {len(results['seeds'])} seeds")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
