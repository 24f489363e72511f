"""MixNet's kernel search at small scale on Fashion-MNIST (Tan & Le, "MixConv: Mixed Depthwise
Convolutional Kernels", arXiv 1907.09595).

The paper's claim: a depthwise convolution that mixes kernel sizes in one layer (MixConv,
channel groups of 3x3, 5x5, 7x7, ...) is more accurate than a single kernel size at the same
FLOPs, and a search over the kernel groups per layer finds better networks than any single size.

The space is ``mixnet_kernels`` (MixNet-S's macro structure, each MBConv row's depthwise kernel
groups chosen from {3}, {3,5}, {3,5,7}, {3,5,7,9}; the ``effml search show mixnet_kernels`` table),
trained on the proxy of ``configs/search_fashion_mnist.yaml`` (one epoch on 3,200 images, scored on
800 held out) at 32 px. Two searches with REINFORCE and the same trials and seed:

- ``flops``: the hard reward (MnasNet's alpha 0, beta -1: nothing gained under T, steep above)
  on MACs, T = the MACs of the same network with every MBConv row a single 5x5 kernel;
- ``latency``: the soft reward on latency measured here (batch 1, 1 thread, eager), T = that
  network's latency.

Then each winner, the single-kernel networks (every MBConv row 3x3, 5x5 or 7x7) and MixNet-S as
published are trained with one full recipe (the proxy's AdamW and cosine schedule on
``--train-images`` images for ``--epochs`` epochs, ``--seeds`` seeds), scored on the 10,000 val
images, and measured for MACs and latency one after another.

Writes ``results.json``, ``mixnet_kernels.png``, the search databases and every trained network as
a spec (``best_flops.json``, ``single_k5.json``, ...; ``effml train|bench|export`` take them by
path) to ``--out``; a rerun continues unfinished searches and reuses finished trainings.

Usage: python experiments/mixnet_kernels.py [--trials 16] [--seeds 0 1] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from _common import fmt, minutes, publish, save_figure, shipped_top1, spread, write_json
from _search import (
    best_row,
    experiment_parser,
    first_of_same,
    full_recipe,
    key_of,
    remeasure,
    save_spec,
    search_config,
    search_rows,
    train_all,
)

SINGLE = (3, 5, 7)  # the single-kernel networks trained in full
BUDGET_KERNEL = 5  # T is the cost of the all-5x5 network
SEARCHES = {
    "flops": {"objective.latency": "flops", "objective.constraint": "hard"},
    "latency": {"objective.latency": "measured", "objective.constraint": "soft"},
}


def single_kernel(base: Any, k: int) -> Any:
    """``base`` with the depthwise convolution of every MBConv row one k x k kernel."""
    return base.replace(stages=tuple(tuple(dataclasses.replace(b, kernel_size=(k,)) if b.kind == "ir" else b
                                           for b in stage) for stage in base.stages))


def kernel_groups(spec: dict[str, Any]) -> list[str]:
    """The depthwise kernel groups of every MBConv row of a spec dict, as '3.5.7' strings."""
    from effml.zoo import spec_from_dict

    return [".".join(map(str, b.kernel_size)) for stage in spec_from_dict(spec).stages for b in stage
            if b.kind == "ir"]


def config_of(name: str, target: float, args: argparse.Namespace) -> Any:
    return search_config({"search.space": "mixnet_kernels", "search.strategy": "reinforce", **SEARCHES[name],
                          "objective.target": target, "search.trials": args.trials, "search.seed": args.seed,
                          "search.storage": args.out / f"{name}.db", "search.study": name, **dict(args.proxy)})


def targets(base: Any, out: Path) -> dict[str, float]:
    """T for each search: the MACs (millions) and the latency here (ms, median of three; kept in
    ``target.json`` so that a rerun continues the same searches) of the all-5x5 network."""
    import json

    from effml.search.study.cost import spec_cost
    from effml.zoo import spec_to_dict

    budget = spec_to_dict(single_kernel(base, BUDGET_KERNEL))
    saved = out / "target.json"
    if saved.is_file():
        latency_ms = json.loads(saved.read_text())["latency_ms"]
    else:
        latency_ms = remeasure({"budget": budget})["budget"]
        write_json(saved, {"latency_ms": latency_ms})
    return {"flops": spec_cost(single_kernel(base, BUDGET_KERNEL))["macs"] / 1e6, "latency": latency_ms}


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "experiment_mixnet_kernels", train_images=8000)
    args = p.parse_args(argv)
    args.proxy, final_set = {"search.workers": args.workers}, []
    if args.quick:
        args.trials, args.seeds, args.epochs, args.train_images = 2, args.seeds[:1], 1, 320
        args.proxy.update({"proxy.train.max_steps": 3, "proxy.data.limit_val": 100})
        final_set = ["train.max_steps=3", "data.limit_val=200"]
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    from effml.search.study.config import build_space
    from effml.search.study.cost import spec_cost
    from effml.zoo import spec_from_dict, spec_to_dict

    base = build_space(config_of("flops", 1.0, args)).base
    target = targets(base, args.out)
    print(f"T: {target['flops']:.2f} MMACs, {target['latency']:.2f} ms (MixNet-S with every MBConv row 5x5)")
    trials = {name: search_rows(config_of(name, target[name], args), name) for name in SEARCHES}

    # the winners, the single-kernel networks and MixNet-S as published, trained in full
    specs = {f"best_{name}": best_row(rows)["spec"] for name, rows in trials.items()}
    specs.update({f"single_k{k}": spec_to_dict(single_kernel(base, k)) for k in SINGLE})
    specs["mixnet_s"] = spec_to_dict(base)
    paths = {name: save_spec(d, args.out / f"{name}.json") for name, d in specs.items()}
    same = first_of_same(specs)
    recipe = full_recipe(args.train_images, args.epochs) + final_set
    runs = train_all({(name, seed): ([f"model.name={paths[name]}", f"train.seed={seed}", *recipe],
                                     args.out / f"final_{name}_seed{seed}")
                      for name in set(same.values()) for seed in args.seeds}, args.workers)
    measured = remeasure({key_of(d): d for d in specs.values()})
    final = {}
    for name, d in specs.items():
        top1 = [shipped_top1(runs[(same[name], s)]) for s in args.seeds]
        final[name] = {"spec": str(paths[name]), **spec_cost(spec_from_dict(d)), "latency_ms": measured[key_of(d)],
                       "kernels": kernel_groups(d), "top1": top1, "top1_summary": spread(top1),
                       "minutes": [minutes(runs[(same[name], s)]) for s in args.seeds], "trained_as": same[name]}
    searches = {name: {"target": target[name], "best": {k: v for k, v in best_row(rows).items() if k != "spec"},
                       "kinds_used": kind_counts(best_row(rows)["spec"]), "trials": rows}
                for name, rows in trials.items()}
    results = {"settings": {"trials": args.trials, "seed": args.seed, "seeds": args.seeds, "epochs": args.epochs,
                            "train_images": args.train_images, "budget_kernel": BUDGET_KERNEL, "quick": args.quick},
               "target": target, "searches": searches, "final": final,
               "wall_minutes": (time.perf_counter() - started) / 60}
    publish(args.out, results, "mixnet_kernels.png", plot, print_tables,
            also=f"the networks' specs ({', '.join(p.name for p in paths.values())})")
    return 0


def kind_counts(spec: dict[str, Any]) -> dict[str, int]:
    """How many MBConv rows of a spec use each kernel group."""
    counts: dict[str, int] = {}
    for g in kernel_groups(spec):
        counts[g] = counts.get(g, 0) + 1
    return dict(sorted(counts.items()))


def print_tables(results: dict[str, Any]) -> None:
    s, t = results["settings"], results["target"]
    print(f"\nsearches ({s['trials']} trials each, seed {s['seed']}); T = the all-{s['budget_kernel']}x"
          f"{s['budget_kernel']} network: {t['flops']:.2f} MMACs (flops, hard reward), {t['latency']:.2f} ms "
          f"(latency, soft reward)")
    for name, r in results["searches"].items():
        b = r["best"]
        groups = ", ".join(f"{g}: {n}" for g, n in r["kinds_used"].items())
        print(f"  {name:<8} best reward {b['reward']:.4f}, proxy acc {100 * b['accuracy']:.1f}%, "
              f"{b['macs'] / 1e6:.2f} MMACs; kernel groups of its MBConv rows: {groups}")
    n = len(s["seeds"])
    print(f"\nfull training ({s['train_images']} images, {s['epochs']} epochs); val top-1 %, mean (min-max) "
          f"over {n} seed(s)")
    print(f"{'network':<14} {'MMACs':>6} {'ms':>6} {'params':>9} {'val top-1 %':>22}  kernels per MBConv row")
    for name, f in sorted(results["final"].items(), key=lambda kv: kv[1]["macs"]):
        print(f"{name:<14} {f['macs'] / 1e6:6.2f} {f['latency_ms']:6.2f} {f['params']:9,d} "
              f"{fmt(f['top1_summary']):>22}  {' '.join(f['kernels'])}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    final = results["final"]
    for ax, x_key, x_label, scale in ((axes[0], "macs", "MMACs", 1e6), (axes[1], "latency_ms", "latency, ms", 1)):
        for i, (name, f) in enumerate(final.items()):
            s = f["top1_summary"]
            ax.errorbar([f[x_key] / scale], [s["mean"]], yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]],
                        fmt="s" if name.startswith("single") else "o", color=f"C{i}", capsize=3, label=name)
        ax.set_xlabel(x_label + (" (batch 1, 1 thread, eager)" if scale == 1 else ""))
        ax.set_ylabel("val top-1 % (min-max over seeds)")
        ax.grid(alpha=0.3)
    t = results["target"]
    axes[0].axvline(t["flops"], color="k", ls="--", lw=0.8, label="T (MACs)")
    axes[1].axvline(t["latency"], color="k", ls="--", lw=0.8, label="T (latency)")
    axes[0].set_title("accuracy vs MACs", fontsize=9)
    axes[1].set_title("accuracy vs latency on this CPU", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
