"""MixNet's kernel search at small scale on Fashion-MNIST (Tan & Le, "MixConv: Mixed Depthwise
Convolutional Kernels", arXiv 1907.09595), on the one-shot engine.

The paper's claim: a depthwise convolution that mixes kernel sizes in one layer (MixConv,
channel groups of 3x3, 5x5, 7x7, ...) is more accurate than a single kernel size at the same
FLOPs, and a search over the kernel groups per layer finds better networks than any single size.
The paper searched with MnasNet's engine (a REINFORCE controller, every candidate trained on a
proxy task: arXiv 1907.09595 section 4.1); here the default engine is TuNAS (one supernet trained
while its controller learns, arXiv 2008.06120), because 16 proxy trainings could not rank these
networks (README, MixNet). The REINFORCE searches of the first version stay as ``--searches flops
latency``.

The space is ``mixnet_kernels`` (MixNet-S's macro structure, each MBConv row's depthwise kernel
groups chosen from {3}, {3,5}, {3,5,7}, {3,5,7,9}; the ``effml search show mixnet_kernels`` table),
at 32 px. T is the cost of the same network with every MBConv row a single 5x5 kernel.

- ``tunas`` (default; ``--search-seeds``): ``configs/search_tunas_fashion_mnist.yaml`` on this
  space with ``TUNAS`` (T in MACs, TuNAS's absolute reward; 540 steps of 64 images from 12,800
  training images, a tenth of them held out for the reward; ``--search-overrides`` change it);
  the controller's most likely network is the search's;
- ``flops``: REINFORCE with the hard reward (MnasNet's alpha 0, beta -1) on MACs, ``--trials``
  proxy trainings (one epoch on 3,200 images, scored on 800 held out);
- ``latency``: REINFORCE with the soft reward on latency measured here (batch 1, 1 thread, eager).

Every found network, the all-5x5 network (the noise floor: its spread over ``--seeds``), MixNet-S
as published and the all-3x3 and all-7x7 networks (the first seed only: context for the table) are
trained with one full recipe (AdamW and cosine on ``--train-images`` images for ``--epochs``
epochs, EMA weights) and scored on the 10,000 val images. TuNAS's network of search seed s trains
with training seed s, so each is paired with the all-5x5 network of the same training seed; a
REINFORCE winner trains with every seed. Each search trains its network as soon as it ends, beside
the fixed networks' trainings (``--workers`` at a time). Latencies are measured again one after
another at the end.

Writes ``results.json``, ``mixnet_kernels.png``, the search run directories and databases and every
trained network as a spec (``tunas_s0.json``, ``single_k5.json``, ...; ``effml train|bench|export``
take them by path) to ``--out``; a rerun continues unfinished searches and reuses finished trainings.

Usage: python experiments/mixnet_kernels.py [--searches tunas flops] [--search-seeds 0 1 2] [--seeds 0 1 2]
       [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import ROOT, fmt, minutes, publish, save_figure, shipped_top1, spread, train, write_json
from _search import (
    RECIPE,
    best_row,
    experiment_parser,
    full_recipe,
    key_of,
    remeasure,
    save_spec,
    search_config,
    search_rows,
    tunas_run,
)

SINGLE = (3, 5, 7)  # the single-kernel networks trained in full
BUDGET_KERNEL = 5  # T is the cost of the all-5x5 network
SEARCHES = {  # the REINFORCE searches (MnasNet's engine, as the paper searched)
    "flops": {"objective.latency": "flops", "objective.constraint": "hard"},
    "latency": {"objective.latency": "measured", "objective.constraint": "soft"},
}
TUNAS_CONFIG = ROOT / "configs" / "search_tunas_fashion_mnist.yaml"
# The TuNAS search, cut to fit the experiment's 45 minutes: 3 epochs of 11,520 images (540 steps of
# 64; 1,280 held out), each reward on one held-out batch (the config's 4 cost about 40% more per
# step, experiments/mobiledet_tunas.py), and a controller learning rate that converges in the 405
# steps after its 25% delay (the config's 0.005 left the MnasNet search at entropy 0.7 after 1,900;
# README, TuNAS).
TUNAS = ["search.space=mixnet_kernels", "proxy.data.limit_train=12800", "proxy.data.limit_val=1000",
         "proxy.train.epochs=3", "proxy.train.eval_every=3", "tunas.reward_batch=1", "tunas.controller_lr=0.05"]
QUICK_TUNAS = ["proxy.data.dataset=digits", "proxy.data.limit_train=null", "proxy.data.limit_val=null",
               "proxy.data.image_size=16", "proxy.data.batch_size=32", "proxy.data.holdout=0.2",
               "proxy.train.epochs=1", "proxy.train.max_steps=6", "proxy.train.eval_every=1"]


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


def tunas_found(seed: int, target: float, args: argparse.Namespace) -> dict[str, Any]:
    """TuNAS search ``seed`` (run directory ``OUT/tunas_sSEED``): its found network (spec dict), the
    found network's metrics in the search, the final entropy and the search's CPU seconds."""
    run_dir = tunas_run(TUNAS_CONFIG, args.out / f"tunas_s{seed}",
                        [*TUNAS, f"objective.target={target}", f"search.seed={seed}", f"proxy.train.seed={seed}",
                         f"search.study=tunas_s{seed}", *args.search_overrides])
    record = json.loads((run_dir / "tunas.json").read_text())
    return {"spec": json.loads((run_dir / "found_model.json").read_text()), "search_metrics": record["found"]["metrics"],
            "entropy": record["history"][-1]["entropy"] if record["history"] else None,
            "steps": record["steps"], "cpu_s": record["cpu_s"], "run": str(run_dir)}


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "experiment_mixnet_kernels", train_images=8000, seeds=(0, 1, 2))
    p.add_argument("--searches", nargs="+", default=["tunas"], choices=["tunas", *SEARCHES])
    p.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="TuNAS search seeds; the network of seed s trains with training seed s")
    p.add_argument("--search-overrides", nargs="*", default=[], help="KEY=VALUE changes to every TuNAS search")
    args = p.parse_args(argv)
    args.proxy, final_set = {"search.workers": args.workers}, []
    given = list(args.search_overrides)
    if args.quick:
        args.trials, args.seeds, args.search_seeds, args.epochs, args.train_images = 2, [0], [0], 1, 320
        args.proxy.update({"proxy.train.max_steps": 3, "proxy.data.limit_val": 100})
        args.search_overrides = QUICK_TUNAS + args.search_overrides
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
    recipe = full_recipe(args.train_images, args.epochs) + final_set
    fixed = {f"single_k{k}": spec_to_dict(single_kernel(base, k)) for k in SINGLE}
    fixed["mixnet_s"] = spec_to_dict(base)
    paths = {name: save_spec(d, args.out / f"{name}.json") for name, d in fixed.items()}
    first = args.seeds[:1]
    fixed_seeds = {"single_k3": first, "single_k7": first, "mixnet_s": args.seeds,
                   "single_k5": sorted(set(args.seeds) | set(args.search_seeds if "tunas" in args.searches else []))}

    def trained(name: str, seed: int) -> Path:
        return train(RECIPE, [f"model.name={paths[name]}", f"train.seed={seed}", *recipe],
                     args.out / f"final_{name}_seed{seed}")

    def search_and_train(seed: int) -> tuple[dict[str, Any], Path]:
        found = tunas_found(seed, target["flops"], args)
        paths[f"tunas_s{seed}"] = save_spec(found["spec"], args.out / f"tunas_s{seed}.json")
        return found, trained(f"tunas_s{seed}", seed)

    # the REINFORCE searches first (their trials run ``--workers`` at a time), then TuNAS's searches,
    # each training its network when it ends, beside the fixed networks' trainings
    trials = {name: search_rows(config_of(name, target[name], args), name) for name in args.searches if name != "tunas"}
    for name, rows in trials.items():
        paths[f"best_{name}"] = save_spec(best_row(rows)["spec"], args.out / f"best_{name}.json")
    with ThreadPoolExecutor(args.workers) as pool:
        tunas_jobs = {seed: pool.submit(search_and_train, seed)
                      for seed in (args.search_seeds if "tunas" in args.searches else [])}
        jobs = {(name, seed): pool.submit(trained, name, seed)
                for name in [*fixed, *(f"best_{n}" for n in trials)]
                for seed in fixed_seeds.get(name, args.seeds)}
        tunas = {seed: job.result() for seed, job in tunas_jobs.items()}
        runs = {key: job.result() for key, job in jobs.items()}
    runs.update({(f"tunas_s{seed}", seed): run_dir for seed, (_, run_dir) in tunas.items()})
    specs = {**fixed, **{f"best_{n}": best_row(rows)["spec"] for n, rows in trials.items()},
             **{f"tunas_s{seed}": found["spec"] for seed, (found, _) in tunas.items()}}
    measured = remeasure({key_of(d): d for d in specs.values()})
    final = {}
    for name, d in specs.items():
        seeds = [s for (n, s) in runs if n == name]
        top1 = [shipped_top1(runs[(name, s)]) for s in seeds]
        final[name] = {"spec": str(paths[name]), **spec_cost(spec_from_dict(d)), "latency_ms": measured[key_of(d)],
                       "kernels": kernel_groups(d), "seeds": seeds, "top1": top1, "top1_summary": spread(top1),
                       "minutes": [minutes(runs[(name, s)]) for s in seeds]}
    searches = {name: {"engine": "reinforce", "target": target[name],
                       "best": {k: v for k, v in best_row(rows).items() if k != "spec"},
                       "kinds_used": kind_counts(best_row(rows)["spec"]), "trials": rows}
                for name, rows in trials.items()}
    searches.update({f"tunas_s{seed}": {"engine": "tunas", "target": target["flops"], "search_seed": seed,
                                        "kinds_used": kind_counts(found["spec"]),
                                        **{k: v for k, v in found.items() if k != "spec"}}
                     for seed, (found, _) in tunas.items()})
    results = {"settings": {"searches": args.searches, "search_seeds": args.search_seeds, "trials": args.trials,
                            "seed": args.seed, "seeds": args.seeds, "epochs": args.epochs,
                            "train_images": args.train_images, "search_overrides": given,
                            "budget_kernel": BUDGET_KERNEL, "quick": args.quick},
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
    print(f"\nsearches; T = the all-{s['budget_kernel']}x{s['budget_kernel']} network: {t['flops']:.2f} MMACs "
          f"(tunas: absolute reward; flops: hard reward), {t['latency']:.2f} ms (latency, soft reward)")
    for name, r in results["searches"].items():
        groups = ", ".join(f"{g}: {n}" for g, n in r["kinds_used"].items())
        if r["engine"] == "tunas":
            m = r["search_metrics"]
            head = (f"TuNAS, {r['steps']} steps, {r['cpu_s'] / 60:.1f} CPU min, final entropy {r['entropy']:.2f}; "
                    f"found: held-out top-1 {100 * m['accuracy']:.1f}% as a child")
        else:
            b = r["best"]
            head = f"REINFORCE, {s['trials']} trials, seed {s['seed']}; best: proxy acc {100 * b['accuracy']:.1f}%"
            m = b
        print(f"  {name:<9} {head}, {m['macs'] / 1e6:.2f} MMACs; kernel groups of its MBConv rows: {groups}")
    print(f"\nfull training ({s['train_images']} images, {s['epochs']} epochs); val top-1 %, mean (min-max) "
          f"over the training seeds named")
    print(f"{'network':<14} {'MMACs':>6} {'ms':>6} {'params':>9} {'val top-1 %':>22} {'seeds':>7}  kernels per MBConv row")
    for name, f in sorted(results["final"].items(), key=lambda kv: kv[1]["macs"]):
        print(f"{name:<14} {f['macs'] / 1e6:6.2f} {f['latency_ms']:6.2f} {f['params']:9,d} "
              f"{fmt(f['top1_summary']):>22} {','.join(map(str, f['seeds'])):>7}  {' '.join(f['kernels'])}")


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
