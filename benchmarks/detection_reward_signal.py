"""Which held-out signal should reward a detection TuNAS search: AP50 of a window of held-out images,
or exp(-loss) of the same window (``tunas.detection_signal``)?

A TuNAS step scores one sampled child on one window (``tunas.reward_batch`` training batches of
held-out images; 32 at the shapes config's batch of 8). The controller can only learn what that
score ranks right. So: a detection supernet is trained (``configs/search_tunas_mobiledet_shapes.yaml``
with the controller never learning, ``tunas.delay=0.99``: children sampled uniformly, as during
TuNAS's delay), then ``--children`` random members are scored

- per window, by both signals, as a search step scores them (BatchNorm on the window's statistics);
- on every held-out image (AP50 after BN calibration: how the search scores its final pick).

Reported per signal: the Kendall tau of one window's scores against the full held-out AP50 (mean
and range over windows), and the share of the score's variance that is between children (an
intraclass correlation: 1 is a signal free of window noise, 0 one that ranks nothing).

    python benchmarks/detection_reward_signal.py --out runs/detection_reward_signal
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "search_tunas_mobiledet_shapes.yaml"


def train_supernet(out: Path, epochs: int, seed: int) -> Path:
    """The detection supernet, trained by a TuNAS search whose controller never learns."""
    run = out / "supernet"
    if not (run / "tunas.json").is_file():
        cmd = [str(Path(sys.executable).parent / "effml"), "search", str(CONFIG), "tunas.delay=0.99",
               f"proxy.train.epochs={epochs}", f"proxy.train.eval_every={epochs}", f"proxy.train.seed={seed}",
               f"search.seed={seed}", f"proxy.run.dir={run}", f"search.storage={out / 'supernet.db'}",
               "proxy.train.threads=1", "proxy.train.log_interval=50"]
        subprocess.run(cmd, check=True)
    return run


def icc(scores: np.ndarray) -> float:
    """Between-children share of the variance of ``scores`` [children, windows] (one-way ICC(1))."""
    k = scores.shape[1]
    means = scores.mean(1)
    between = k * means.var(ddof=1)
    within = scores.var(1, ddof=1).mean()
    return float((between - within) / (between + (k - 1) * within)) if between + within > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "detection_reward_signal")
    p.add_argument("--epochs", type=int, default=8, help="supernet training epochs (50 steps each)")
    p.add_argument("--children", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.process_time()
    run = train_supernet(args.out, args.epochs, args.seed)

    import torch
    from scipy.stats import kendalltau

    from effml.search.oneshot.signals import DetectionSignal
    from effml.search.oneshot.tunas import load_tunas_supernet
    from effml.train.trainer import preserved_global_state

    torch.set_num_threads(1)
    with preserved_global_state():
        trained = load_tunas_supernet(run)
    supernet, trainer = trained.supernet, trained.trainer
    size = round(4 * trainer.cfg.data.batch_size)  # tunas.reward_batch (4) training batches
    holdout = len(trainer.dataset("holdout"))
    windows = max(2, holdout // size)
    rng = random.Random(args.seed)
    members = [supernet.child_spec(supernet.space.random_member(rng).spec) for _ in range(args.children)]
    signals = {"ap50": DetectionSignal("ap50"), "loss": DetectionSignal("loss")}
    scores = {k: np.zeros((len(members), windows)) for k in signals}
    full, seconds = [], {k: 0.0 for k in signals}
    for i, spec in enumerate(members):
        supernet.train()  # a search step's scoring: BN on the window's statistics (keep_buffers)
        for name, signal in signals.items():
            t = time.process_time()
            for w in range(windows):
                scores[name][i, w] = signal.quality(trainer, supernet, spec, size, w)
            seconds[name] += (time.process_time() - t) / windows
        supernet.eval()
        full.append(trained.evaluate(trained.calibrated(spec), spec.resolution, "holdout")["AP50"])
        print(f"child {i}: held-out AP50 {full[-1]:.1f}; window AP50 {np.round(100 * scores['ap50'][i], 1)}; "
              f"window exp(-loss) {np.round(scores['loss'][i], 3)}", flush=True)
    results = {"run": str(run), "children": len(members), "windows": windows, "window_images": size,
               "holdout_images": holdout, "full_holdout_ap50": full, "signals": {}}
    for name in signals:
        taus = [kendalltau(scores[name][:, w], full).statistic for w in range(windows)]
        results["signals"][name] = {
            "scores": scores[name].tolist(), "icc": icc(scores[name]),
            "tau_one_window": {"mean": statistics.mean(taus), "min": min(taus), "max": max(taus)},
            "tau_mean_of_windows": kendalltau(scores[name].mean(1), full).statistic,
            "cpu_s_per_window": seconds[name] / len(members)}
    results["cpu_s"] = time.process_time() - start
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"{len(members)} children, {windows} windows of {size} held-out images (of {holdout}); "
          f"held-out AP50 of the children {min(full):.1f}-{max(full):.1f}")
    for name, r in results["signals"].items():
        t = r["tau_one_window"]
        print(f"  {name:5s} one window vs full held-out AP50: Kendall tau {t['mean']:.2f} ({t['min']:.2f}-{t['max']:.2f}); "
              f"ICC {r['icc']:.2f}; {r['cpu_s_per_window']:.2f} CPU s a window")
    return 0


if __name__ == "__main__":
    sys.exit(main())
