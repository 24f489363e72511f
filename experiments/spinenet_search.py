"""SpineNet's scale-permuted backbone search at small scale on the embedded shapes set (Du et al.,
"SpineNet: Learning Scale-Permuted Backbone for Recognition and Localization", arXiv 1912.05027).

The paper's claim: at the same FLOPs, a backbone whose blocks are permuted in scale and connected
across scales (found by search inside RetinaNet) detects better than the scale-decreased ResNet
with an FPN decoder (section 3.3, Figure 4: on COCO, R50-FPN 37.8% AP; R0-SP53, the same blocks
permuted, 40.7%; SpineNet-49, with block adjustments, 40.8% at 10% fewer FLOPs).

The search of ``configs/search_spinenet_shapes.yaml``: SpineNet's released space over the block
table (``effml.search.spaces.scale_permuted``: block order, levels, two inputs per block, residual or
bottleneck), every member a small RetinaNet scaled to the MACs of the scale-decreased member,
trained from scratch on 400 generated 128 px images and scored by AP50 on the 100 held out;
REINFORCE. Then three RetinaNets of the same MACs (within a few %) are trained for ``--epochs`` epochs on
all 500 training images and scored by AP50 on 128 generated val images (``--seeds`` seeds):

- ``found``: the search's winner;
- ``spinenet49``: SpineNet-49's block table (the one the paper found on COCO), scaled down;
- ``scale_decreased``: the ResNet-FPN-like table (``SCALE_DECREASED_BLOCK_SPECS``).

Writes ``results.json``, ``spinenet_search.png`` (held-out AP50 per trial; the three networks'
val AP50) and the three detectors as specs (``found.json``, ``spinenet49.json``,
``scale_decreased.json``; ``effml train|bench|export`` take them by path) to ``--out``; a rerun
continues an unfinished search and reuses finished trainings.

Usage: python experiments/spinenet_search.py [--trials 12] [--seeds 0 1 2] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from _common import ROOT, fmt, publish, save_figure, spread
from _search import (
    best_row,
    detection_recipe,
    experiment_parser,
    save_spec,
    search_config,
    search_rows,
    train_detectors,
)

CONFIG = ROOT / "configs" / "search_spinenet_shapes.yaml"
NETWORKS = ("found", "spinenet49", "scale_decreased")


def config_of(args: argparse.Namespace) -> Any:
    return search_config({"search.trials": args.trials, "search.seed": args.seed,
                          "search.storage": args.out / "search.db", "search.study": "spinenet",
                          **dict(args.proxy)}, CONFIG)


def rivals(cfg: Any) -> dict[str, Any]:
    """SpineNet-49's table and the scale-decreased one as RetinaNets of the space's MACs."""
    from effml.models.spinenet import blocks_from_table
    from effml.models.spinenet_specs import SPINENET_BLOCK_SPECS
    from effml.search import build_space
    from effml.search.spaces.scale_permuted import scaled_to_macs, small_retinanet

    space = build_space(cfg)
    b = space.base
    spinenet49 = small_retinanet(blocks_from_table(SPINENET_BLOCK_SPECS), b.num_classes, b.resolution)
    return {"spinenet49": scaled_to_macs(spinenet49, space.budget, space.tolerance), "scale_decreased": b,
            "budget_macs": space.budget}


def levels(spec: dict[str, Any]) -> list[str]:
    """A block table as 'L<level><r|b>' per block, outputs marked with P (e.g. 'L4b', 'P3b')."""
    return [f"{'P' if b['is_output'] else 'L'}{b['level']}{b['block_fn'][0]}" for b in spec["backbone"]["blocks"]]


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "experiment_spinenet_search", trials=12, epochs=10, train_images=None,
                          seeds=(0, 1, 2))
    args = p.parse_args(argv)
    args.proxy, final_set = {"search.workers": args.workers}, []
    if args.quick:
        args.trials, args.seeds, args.epochs = 2, args.seeds[:1], 1
        args.proxy.update({"proxy.train.max_steps": 2, "proxy.detect.shapes_train": 40, "proxy.detect.shapes_val": 8})
        final_set = ["train.max_steps=2", "train.bn_recalibrate=0"]
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    from effml.zoo import spec_to_dict

    cfg = config_of(args)
    others = rivals(cfg)
    budget = others.pop("budget_macs")
    print(f"every network at {budget / 1e6:.1f}M MACs (the scale-decreased table's)")
    rows = search_rows(cfg, "spinenet")
    specs = {"found": best_row(rows)["spec"], **{k: spec_to_dict(v) for k, v in others.items()}}
    paths = {name: save_spec(d, args.out / f"{name}.json") for name, d in specs.items()}
    recipe = detection_recipe(cfg, args.out, args.epochs)
    final = train_detectors(specs, paths, recipe, args, final_set)
    for name, d in specs.items():
        final[name].update(filter_size_scale=d["backbone"]["filter_size_scale"], blocks=levels(d))
    base = final["scale_decreased"]["AP50"]
    paired = {name: spread([a - b for a, b in zip(final[name]["AP50"], base)]) for name in ("found", "spinenet49")}
    best = best_row(rows)
    results = {"settings": {"trials": args.trials, "seed": args.seed, "seeds": args.seeds, "epochs": args.epochs,
                            "config": str(CONFIG), "quick": args.quick},
               "budget_macs": budget,
               "search": {"best": {k: v for k, v in best.items() if k != "spec"},
                          "trials": [{k: v for k, v in r.items() if k != "spec"} | {"blocks": levels(r["spec"])}
                                     for r in rows]},
               "final": final, "minus_scale_decreased": paired,
               "wall_minutes": (time.perf_counter() - started) / 60}
    publish(args.out, results, "spinenet_search.png", plot, print_tables,
            also=f"the detectors' specs ({', '.join(p.name for p in paths.values())})")
    return 0


def print_tables(results: dict[str, Any]) -> None:
    s, trials = results["settings"], results["search"]["trials"]
    held = sorted(100 * r["accuracy"] for r in trials)  # a trial's accuracy is the search's ACC, AP50 / 100
    print(f"\nsearch: {len(trials)} trials (seed {s['seed']}), every member at {results['budget_macs'] / 1e6:.1f}M MACs; "
          f"held-out AP50 {held[0]:.1f}-{held[-1]:.1f}, the winner (trial {results['search']['best']['number']}) "
          f"{100 * results['search']['best']['accuracy']:.1f}")
    n = len(s["seeds"])
    print(f"\ntrained for {s['epochs']} epochs on all training images; val AP50, mean (min-max) over {n} seed(s)")
    print(f"{'network':<16} {'MMACs':>7} {'scale':>6} {'ms':>6} {'params':>10} {'val AP50':>22}  "
          f"{'minus scale-decreased':>22}")
    for name, f in results["final"].items():
        d = results["minus_scale_decreased"].get(name)
        print(f"{name:<16} {f['macs'] / 1e6:7.1f} {f['filter_size_scale']:6.3f} {f['latency_ms']:6.2f} "
              f"{f['params']:10,d} {fmt(f['AP50_summary'], 1):>22}  {fmt(d, 1) if d else '-':>22}")
    print("\nblock tables (L: intermediate, P: output; level; r residual, b bottleneck):")
    for name, f in results["final"].items():
        print(f"  {name:<16} {' '.join(f['blocks'])}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    trials = results["search"]["trials"]
    left.plot([r["number"] for r in trials], [100 * r["accuracy"] for r in trials], "o", ms=4, color="C0")
    left.set_xlabel("trial")
    left.set_ylabel("AP50 (%) on held-out training images")
    left.set_title(f"search: every member at {results['budget_macs'] / 1e6:.0f}M MACs", fontsize=9)
    left.grid(alpha=0.3)
    for i, (name, f) in enumerate(results["final"].items()):
        s = f["AP50_summary"]
        right.errorbar([i], [s["mean"]], yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]], fmt="o", capsize=3,
                       color=f"C{i}")
        right.scatter([i] * len(f["AP50"]), f["AP50"], s=10, color=f"C{i}", alpha=0.5)
    right.set_xticks(range(len(results["final"])), list(results["final"]), fontsize=8)
    right.set_ylabel("val AP50 (%; seeds, mean and min-max)")
    right.set_title("the same MACs, trained longer", fontsize=9)
    right.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
