"""The training methods that the digits data could not separate, again on Fashion-MNIST with seeds:
ensembles of small models against one model scaled to the same MACs, and AdvProp.

- Ensembles (Kondratyuk et al., arXiv 2005.00570; claim: averaging k independently seeded small
  models beats one model scaled up to the same MACs): ``experiments/ensembles.py`` once per
  ``--ensemble-seeds`` seed (members seed + 0..k-1, the big model seed), k = 3 members of
  EfficientNet-B0 x (width 0.25, depth 0.25) against B0 compound-scaled to their summed MACs.
- AdvProp (Xie et al., arXiv 1911.09665; claim: adversarial examples through auxiliary BatchNorms
  improve clean accuracy): the ensembles' member network trained with ``advprop.enabled=true``
  (PGD, epsilon ``--epsilon`` in 0-255 units, the paper's step rule) for ``--advprop-seeds``,
  against the same network trained plainly: the ensembles' members, which use the same recipe.

Every run uses one recipe, configs/fashion_mnist.yaml on the first ``--train-images`` training
images for ``--epochs`` epochs at 32 px, and is scored on the 10,000 val images with the weights it
ships (EMA). Writes ``results.json`` and ``training_methods.png`` to ``--out``; a rerun reuses
finished runs.

Usage: python experiments/training_methods.py [--epochs 5] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import ROOT, fmt, minutes, publish, run, save_figure, shipped_top1, spread, train

RECIPE = ROOT / "configs" / "fashion_mnist.yaml"
MEMBER = (0.25, 0.25)  # B0 width, depth multipliers of an ensemble member (experiments/ensembles.py)


def recipe(args: argparse.Namespace) -> list[str]:
    """The overrides every run shares (ensembles.py adds model, epochs, size, seed and directory)."""
    return [f"data.limit_train={args.train_images}", f"schedule.decay_epochs={args.epochs / 40:g}",
            "train.ema_decay=0.995", f"train.eval_every={args.epochs}", *args.set]


def ensembles(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / f"ensembles_seed{seed}"
    if not (out / "results.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        sets = [x for o in recipe(args) for x in ("--set", o)]
        run([sys.executable, str(ROOT / "experiments" / "ensembles.py"), "--config", RECIPE, "--image-size", "32",
             "--epochs", str(args.epochs), "--k", str(args.k), "--seed", str(seed), "--out", out, *sets],
            args.out / f"ensembles_seed{seed}.log")
    return json.loads((out / "results.json").read_text())


def advprop_run(seed: int, spec_path: Path, args: argparse.Namespace) -> Path:
    return train(RECIPE, [f"model.name={spec_path}", f"train.epochs={args.epochs}", "data.image_size=32",
                          f"train.seed={seed}", "advprop.enabled=true", f"advprop.epsilon={args.epsilon}",
                          *recipe(args)], args.out / f"advprop_seed{seed}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--k", type=int, default=3, help="ensemble members")
    p.add_argument("--ensemble-seeds", type=int, nargs="+", default=[0, 10, 20],
                   help="one ensembles.py run each (members seed .. seed + k - 1)")
    p.add_argument("--advprop-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epsilon", type=float, default=1.0, help="AdvProp's PGD radius, 0-255 pixel units")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "experiment_training_methods")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (CI)")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.train_images, args.k = 1, 256, 2
        args.ensemble_seeds, args.advprop_seeds = args.ensemble_seeds[:1], args.advprop_seeds[:1]
        args.set = ["train.max_steps=3", "data.limit_val=200", *args.set]
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from ensembles import scaled_b0

    from effml.zoo import spec_to_json

    member = scaled_b0(*MEMBER, 32, 10).spec
    spec_path = args.out / "member.json"
    spec_path.write_text(spec_to_json(member))
    with ThreadPoolExecutor(args.workers) as pool:
        ens = list(pool.map(lambda s: ensembles(s, args), args.ensemble_seeds))
        adv_dirs = list(pool.map(lambda s: advprop_run(s, spec_path, args), args.advprop_seeds))

    def ema_top1(row: dict[str, Any]) -> float:
        return row["engine_top1"]["ema"] if row["engine_top1"]["ema"] is not None else row["engine_top1"]["raw"]

    members = [ema_top1(m) for r in ens for m in r["members"]]
    ensemble = [r["ensemble"]["top1"] for r in ens]
    big = [ema_top1(r["big"]) for r in ens]
    advprop = [shipped_top1(d) for d in adv_dirs]
    plain_seeds = [m["seed"] for r in ens for m in r["members"]]
    plain = dict(zip(plain_seeds, members))
    results = {
        "settings": {"epochs": args.epochs, "train_images": args.train_images, "k": args.k,
                     "ensemble_seeds": args.ensemble_seeds, "advprop_seeds": args.advprop_seeds,
                     "epsilon": args.epsilon, "recipe": str(RECIPE), "set": recipe(args), "quick": args.quick},
        "member": {"macs": ens[0]["members"][0]["macs"], "params": ens[0]["members"][0]["params"],
                   "top1": members, "seeds": plain_seeds, "top1_summary": spread(members)},
        "ensemble": {"macs": ens[0]["ensemble"]["macs"], "top1": ensemble, "top1_summary": spread(ensemble),
                     "gain_over_mean_member": spread([r["ensemble"]["top1"] - sum(ema_top1(m) for m in r["members"])
                                                      / len(r["members"]) for r in ens])},
        "big": {"macs": ens[0]["big"]["macs"], "params": ens[0]["big"]["params"],
                "arch": ens[0]["settings"]["big"], "top1": big, "top1_summary": spread(big)},
        "ensemble_minus_big": spread([e - b for e, b in zip(ensemble, big)]),
        "advprop": {"top1": advprop, "seeds": args.advprop_seeds, "top1_summary": spread(advprop),
                    "minutes": [minutes(d) for d in adv_dirs]},
        # paired by seed where a plain member trained with the same seed
        "advprop_minus_plain": spread([a - plain[s] for a, s in zip(advprop, args.advprop_seeds) if s in plain]
                                      or [float("nan")]),
        "wall_minutes": (time.perf_counter() - started) / 60,
    }
    publish(args.out, results, "training_methods.png", plot, print_tables)
    return 0


def print_tables(results: dict[str, Any]) -> None:
    s = results["settings"]
    print(f"\nFashion-MNIST val top-1 %, mean (min-max); {s['epochs']} epochs on {s['train_images']} images, 32 px")
    print(f"{'model':<40} {'MMACs':>6} {'runs':>4} {'val top-1 %':>22}")
    rows = [(f"member B0 x (w {MEMBER[0]}, d {MEMBER[1]})", results["member"]),
            (f"same member + AdvProp (eps {s['epsilon']:g})", {**results["advprop"], "macs": results["member"]["macs"]}),
            (f"ensemble of {s['k']} members", results["ensemble"]),
            ("one big B0 at the ensemble's MACs", results["big"])]
    for name, r in rows:
        print(f"{name:<40} {r['macs'] / 1e6:6.2f} {len(r['top1']):4d} {fmt(r['top1_summary']):>22}")
    print(f"ensemble - big, per seed: {fmt(results['ensemble_minus_big'])} points; "
          f"ensemble - its mean member: {fmt(results['ensemble']['gain_over_mean_member'])}")
    print(f"AdvProp - plain, same seed: {fmt(results['advprop_minus_plain'])} points")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    groups = [("member", results["member"]), ("member\n+ AdvProp", results["advprop"]),
              (f"ensemble of {results['settings']['k']}", results["ensemble"]), ("big B0,\nsame MACs", results["big"])]
    for i, (label, r) in enumerate(groups):
        ax.scatter([i] * len(r["top1"]), r["top1"], color=f"C{i}", alpha=0.7)
        ax.hlines(r["top1_summary"]["mean"], i - 0.25, i + 0.25, color=f"C{i}")
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set_ylabel("Fashion-MNIST val top-1 % (one dot per run)")
    ax.set_title("training methods on Fashion-MNIST", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
