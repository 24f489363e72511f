"""Write a search report and a screenshot of it in headless Chromium (the README's picture).

With ``--study FILE.db`` the report is of that study; without it, of a demo study fabricated
from the record format: MnasNet-space samples (real specs, real MACs and parameters from the
layer plan) whose accuracy and latency are made up from their MACs with noise, so the demo is
named "(fabricated metrics)" and says nothing about any real search.

Usage: python benchmarks/make_report_screenshot.py [--study search.db [--name NAME]]
       [--kind reward|multi] [--trials 48] [--seed 0] [--report-dir DIR]
       [--out docs/search_report.png] [--width 1280] [--height 1450]
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
from PIL import Image, ImageChops

from effml.search.spaces.catalog import named_space
from effml.search.study.cost import spec_cost
from effml.search.study.report import write_report
from effml.search.study.reward import CONSTRAINTS, mnasnet_reward
from effml.search.study.storage import load_study
from effml.zoo import spec_to_dict

ERRORS = ["proxy training diverged: loss is nan at epoch 2 (lower optim.lr or raise train.warmup_epochs)",
          "worker 1 was killed (out of memory?); the trial is sampled anew on resume"]


def demo_study(storage: str, kind: str, trials: int, seed: int) -> optuna.Study:
    """A study in the record format, with real MnasNet-space specs and fabricated metrics."""
    rng = random.Random(seed)
    target = 12.0  # ms
    alpha, beta = CONSTRAINTS["soft"]
    directions = ["maximize"] if kind == "reward" else ["maximize", "minimize"]
    study = optuna.create_study(study_name=f"demo-mnasnet-{kind} (fabricated metrics)", storage=storage,
                                directions=directions, sampler=optuna.samplers.RandomSampler(seed=seed))
    space = named_space("mnasnet", num_classes=10, resolution=96)
    study.set_user_attr("objective", {"kind": kind, "latency": "measured", "runtime": "onnxruntime",
                                      "target": target, "constraint": "soft", "alpha": None, "beta": None})
    study.set_user_attr("space", space.to_dict())
    study.set_user_attr("config", {"search": {"space": "mnasnet", "strategy": "evolution", "trials": trials},
                                   "objective": {"kind": kind, "target": target}})
    for n in range(trials):
        trial = study.ask()
        sample = space.sample(trial)
        if n in (7, 23):
            trial.set_user_attr("error", ERRORS[n == 23])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        if n in (11, 30, 41):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        cost = spec_cost(sample.spec)
        macs, params = cost["macs"], cost["params"]
        # Made up: accuracy saturates with log-MACs, latency grows with MACs; both noisy.
        bits = math.log2(macs / 50e6)
        accuracy = min(0.95, 0.70 + 0.06 * bits - 0.01 * max(0.0, bits - 1.6) ** 2 + rng.gauss(0, 0.012))
        latency = 0.9 + macs / 12e6 * rng.uniform(0.85, 1.25)
        reward = mnasnet_reward(accuracy, latency, target, alpha, beta) if kind == "reward" else None
        for key, value in {"metrics": {"accuracy": accuracy, "latency_ms": latency, "macs": macs,
                                       "params": params, "reward": reward},
                           "spec": spec_to_dict(sample.spec), "overrides": list(sample.overrides),
                           "seed": seed + n, "duration_s": rng.uniform(40, 90)}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, [reward] if kind == "reward" else [accuracy, latency])
    return study


def screenshot(html: Path, out: Path, width: int, height: int) -> None:
    """A PNG of ``html`` as headless Chromium shows it in a ``width`` x ``height`` window."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        shot, profile = Path(tmp) / "shot.png", Path(tmp) / "profile"
        subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
                        "--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={shot}",
                        html.resolve().as_uri()], check=True, capture_output=True, timeout=60)
        # Cut the empty window below the page, keeping a margin.
        img = Image.open(shot).convert("RGB")
        bbox = ImageChops.difference(img, Image.new("RGB", img.size, "white")).getbbox()
        if bbox is not None:
            img = img.crop((0, 0, img.width, min(img.height, bbox[3] + 24)))
        img.save(shot, optimize=True)
        shutil.move(shot, out)  # whole or not at all: the README never shows a half-written picture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", help="a study's SQLite file (default: fabricate a demo study)")
    ap.add_argument("--name", help="the study's name in that file (default: its only study)")
    ap.add_argument("--kind", choices=["reward", "multi"], default="reward", help="the demo study's objective")
    ap.add_argument("--trials", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-dir", help="where the report goes (default: a temporary folder)")
    ap.add_argument("--out", default="docs/search_report.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1450)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if args.study:
            study = load_study(args.study, args.name)
        else:
            study = demo_study(f"sqlite:///{Path(tmp) / 'demo.db'}", args.kind, args.trials, args.seed)
        report = write_report(study, Path(args.report_dir or Path(tmp) / "report"))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(report.html, out, args.width, args.height)
        kept = report.html if args.report_dir else "not kept (pass --report-dir to keep it)"
        print(f"report: {kept}\nscreenshot: {out}")


if __name__ == "__main__":
    main()
