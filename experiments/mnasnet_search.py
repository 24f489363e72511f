"""MnasNet's latency-aware architecture search at small scale, on Fashion-MNIST (Tan et al., arXiv
1807.11626).

Four searches of the MnasNet space (``configs/search_fashion_mnist.yaml``: 7 MobileNetV2-referenced
blocks, 216 choices each), each with the same number of trials, the same proxy training (one epoch
on 3,200 training images, scored on 800 held out) and the same latency target T, the measured
latency of the space's own reference network, MobileNetV2 at 32 px (batch 1, 1 thread, eager):

- ``reinforce_soft``: the REINFORCE controller with the soft reward ACC * (LAT / T)^-0.07 (paper eq. 2);
- ``random_soft``: random search with the same reward;
- ``reinforce_hard``: the hard reward (alpha 0, beta -1: nothing gained below T, steep above);
- ``reinforce_flops``: the soft reward with MACs in place of measured latency (T = the reference's MACs).

Then each search's best trial and the reference network (the zoo-like baseline of the same
latency) are trained with a full schedule (the proxy's AdamW and cosine schedule, on
``--train-images`` images for ``--epochs`` epochs, ``--seeds`` seeds) and scored on the 10,000 val
images (a winner two searches share is trained once), and every distinct sampled network's latency
is measured again, one after another on a quiet machine, for the rank correlation of MACs and
latency (the paper's point that FLOPs is a poor proxy for latency).

``--long-epochs N``: the reference and the first search's winner are also trained once (seed 0)
for N epochs with the same recipe, scored on val every ``LONG_EVAL_EVERY`` epochs: does the
comparison hold when MobileNetV2, whose 17 expansion-6 blocks train slowest, is not under-trained?

Writes ``results.json``, ``mnasnet_search.png``, the search databases (``effml search report
OUT/reinforce_soft.db``) and each search's winner as a spec (``best_reinforce_soft.json``, ...;
``effml train|bench|export`` take them by path) to ``--out``; a rerun continues unfinished searches
and reuses finished trainings.

Usage: python experiments/mnasnet_search.py [--trials 16] [--seeds 0 1 2] [--long-epochs 15] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _common import fmt, minutes, publish, save_figure, shipped_top1, spread
from _search import (
    RECIPE,
    SEARCH_CONFIG,
    best_row,
    experiment_parser,
    first_of_same,
    full_recipe,
    key_of,
    reference_target,
    remeasure,
    save_spec,
    search_config,
    search_rows,
    train_all,
)

SEARCHES = {
    "reinforce_soft": {"search.strategy": "reinforce", "objective.constraint": "soft", "objective.latency": "measured"},
    "random_soft": {"search.strategy": "random", "objective.constraint": "soft", "objective.latency": "measured"},
    "reinforce_hard": {"search.strategy": "reinforce", "objective.constraint": "hard", "objective.latency": "measured"},
    "reinforce_flops": {"search.strategy": "reinforce", "objective.constraint": "soft", "objective.latency": "flops"},
}
LONG_EVAL_EVERY = 3  # the long runs' val curve: one score every 3 epochs


def config_of(name: str, target: float, args: argparse.Namespace) -> Any:
    return search_config({**SEARCHES[name], "objective.target": target, "search.trials": args.trials,
                          "search.seed": args.seed, "search.storage": args.out / f"{name}.db", "search.study": name,
                          **dict(args.proxy)})


def summarize_search(rows: list[dict[str, Any]], target_ms: float, measured: dict[str, float]) -> dict[str, Any]:
    """Best trial, the share of sampled networks at or under T (re-measured), and the mean reward of
    the first and second half of the trials (a controller that learns raises the second)."""
    best = best_row(rows)
    half = len(rows) // 2
    lat = [measured[key_of(r["spec"])] for r in rows]
    return {"trials": len(rows), "best": {k: v for k, v in best.items() if k != "spec"},
            "best_latency_ms": measured[key_of(best["spec"])],
            "under_target": sum(x <= target_ms for x in lat) / len(lat),
            "reward_first_half": statistics.fmean(r["reward"] for r in rows[:half]) if half else None,
            "reward_second_half": statistics.fmean(r["reward"] for r in rows[half:]),
            "latency_ms": spread(lat)}


def final_trainings(specs: dict[str, Path], long: dict[str, Path],
                    args: argparse.Namespace) -> dict[tuple[str, int | str], Path]:
    """Every spec trained for ``--epochs`` with each of ``--seeds`` (key: name, seed), and the ``long``
    ones once for ``--long-epochs`` (key: name, "long"), in one pool, the long ones first."""
    recipe = full_recipe(args.train_images, args.epochs) + args.final_set
    long_recipe = [*full_recipe(args.train_images, args.long_epochs), *args.final_set,
                   f"train.eval_every={min(LONG_EVAL_EVERY, args.long_epochs)}"]
    jobs: dict[tuple[str, int | str], tuple[list[str], Path]] = {
        (name, "long"): ([f"model.name={path}", "train.seed=0", *long_recipe],
                         args.out / f"long_{name}_{args.long_epochs}ep") for name, path in long.items()}
    jobs.update({(name, seed): ([f"model.name={path}", f"train.seed={seed}", *recipe],
                                args.out / f"final_{name}_seed{seed}")
                 for name, path in specs.items() for seed in args.seeds})
    return train_all(jobs, args.workers)


def val_curve(run_dir: Path) -> list[dict[str, float]]:
    """A run's val top-1 after each evaluation: epoch, raw and EMA weights, in percent."""
    from effml.train.run_dir import read_metrics

    return [{"epoch": r["epoch"], "top1": r["val"]["top1"], "ema_top1": r["ema_val"]["top1"] if r.get("ema_val") else None}
            for _, r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "experiment_mnasnet_search", seeds=(0, 1, 2))
    p.add_argument("--searches", nargs="+", default=list(SEARCHES), choices=list(SEARCHES))
    p.add_argument("--long-epochs", type=int, default=0,
                   help="also train the reference and the first search's winner this long, once (0: no)")
    args = p.parse_args(argv)
    args.proxy, args.final_set = {"search.workers": args.workers}, []
    if args.quick:
        args.trials, args.seeds, args.epochs, args.train_images = 3, args.seeds[:1], 1, 320
        args.proxy.update({"proxy.train.max_steps": 3, "proxy.data.limit_val": 100})
        args.final_set = ["train.max_steps=3", "data.limit_val=200"]
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    ref = reference_target(config_of("reinforce_soft", 1.0, args), args.out / "target.json")
    target_ms, target_mmacs = ref["latency_ms"], ref["macs"] / 1e6
    print(f"target T: {target_ms:.2f} ms, {target_mmacs:.2f} MMACs (the reference, MobileNetV2 at 32 px)")
    trials = {name: search_rows(config_of(name, target_mmacs if SEARCHES[name]["objective.latency"] == "flops"
                                          else target_ms, args), name)
              for name in args.searches}

    from effml.search.study.cost import spec_cost
    from effml.zoo import spec_from_dict, spec_to_dict

    ref_dict = spec_to_dict(ref["spec"])
    specs = {key_of(r["spec"]): r["spec"] for rows in trials.values() for r in rows}
    specs[key_of(ref_dict)] = ref_dict
    measured = remeasure(specs)
    for rows in trials.values():
        for r in rows:
            r["latency_quiet_ms"] = measured[key_of(r["spec"])]
    summaries = {name: summarize_search(rows, target_ms, measured) for name, rows in trials.items()}

    # the winners and the reference, trained with the full recipe
    paths = {"reference": save_spec(ref_dict, args.out / "reference_mobilenet_v2.json")}
    for name, rows in trials.items():
        paths[name] = save_spec(best_row(rows)["spec"], args.out / f"best_{name}.json")
    same = first_of_same({name: json.loads(path.read_text()) for name, path in paths.items()})
    long = {name: paths[name] for name in ("reference", args.searches[0])} if args.long_epochs else {}
    runs = final_trainings({name: paths[name] for name in set(same.values())}, long, args)  # a shared winner once
    final = {}
    for name, path in paths.items():
        d = json.loads(path.read_text())
        cost = spec_cost(spec_from_dict(d))
        top1 = [shipped_top1(runs[(same[name], s)]) for s in args.seeds]
        final[name] = {"spec": str(path), "macs": cost["macs"], "params": cost["params"],
                       "latency_ms": measured[key_of(d)], "top1": top1, "top1_summary": spread(top1),
                       "minutes": [minutes(runs[(same[name], s)]) for s in args.seeds]}
    long_runs = {name: {"epochs": args.long_epochs, "seed": 0, "top1": shipped_top1(runs[(name, "long")]),
                        "curve": val_curve(runs[(name, "long")]), "minutes": minutes(runs[(name, "long")])}
                 for name in long}

    from scipy.stats import kendalltau, spearmanr

    keys = list(specs)
    macs = [spec_cost(spec_from_dict(specs[k]))["macs"] for k in keys]
    lat = [measured[k] for k in keys]
    in_search = [(r["latency_ms"], measured[key_of(r["spec"])]) for rows in trials.values() for r in rows
                 if r["latency_ms"] is not None]
    correlation = {"models": len(keys), "spearman_macs_latency": spearmanr(macs, lat).statistic,
                   "kendall_macs_latency": kendalltau(macs, lat).statistic,
                   "spearman_search_vs_quiet_latency": spearmanr(*zip(*in_search)).statistic if len(in_search) > 2
                   else None}

    results = {"settings": {"trials": args.trials, "seed": args.seed, "seeds": args.seeds, "epochs": args.epochs,
                            "train_images": args.train_images, "searches": args.searches, "config": str(SEARCH_CONFIG),
                            "recipe": str(RECIPE), "long_epochs": args.long_epochs or None, "quick": args.quick},
               "target": {"latency_ms": target_ms, "mmacs": target_mmacs},
               "searches": {name: {"summary": summaries[name], "trials": trials[name]} for name in trials},
               "final": final, "long": long_runs, "same_winner_as": same, "correlation": correlation,
               "models": [{"macs": m, "latency_ms": x} for m, x in zip(macs, lat)],
               "wall_minutes": (time.perf_counter() - started) / 60}
    publish(args.out, results, "mnasnet_search.png", plot, print_tables,
            also=f"the winners' specs ({', '.join(p.name for p in paths.values())})")
    return 0


def print_tables(results: dict[str, Any]) -> None:
    t = results["target"]
    print(f"\nsearches ({results['settings']['trials']} trials each, seed {results['settings']['seed']}); "
          f"T = {t['latency_ms']:.2f} ms ({t['mmacs']:.2f} MMACs for reinforce_flops)")
    print(f"{'search':<16} {'best reward':>11} {'its acc %':>9} {'its ms':>7} {'MMACs':>6} {'<= T':>5} "
          f"{'reward 1st half':>15} {'2nd half':>8}")
    for name, s in results["searches"].items():
        s = s["summary"]
        first = f"{s['reward_first_half']:.4f}" if s["reward_first_half"] is not None else "-"
        print(f"{name:<16} {s['best']['reward']:11.4f} {100 * s['best']['accuracy']:9.1f} {s['best_latency_ms']:7.2f} "
              f"{s['best']['macs'] / 1e6:6.2f} {100 * s['under_target']:4.0f}% {first:>15} {s['reward_second_half']:8.4f}")
    n = len(results["settings"]["seeds"])
    print(f"\nfull training of each search's best and of the reference; val top-1 %, mean (min-max) over {n} seed(s)")
    print(f"{'network':<16} {'MMACs':>6} {'ms':>6} {'params':>9} {'val top-1 %':>22}")
    for name, f in sorted(results["final"].items(), key=lambda kv: kv[1]["latency_ms"]):
        print(f"{name:<16} {f['macs'] / 1e6:6.2f} {f['latency_ms']:6.2f} {f['params']:9,d} {fmt(f['top1_summary']):>22}")
    for name, r in results.get("long", {}).items():
        curve = ", ".join(f"{x['epoch']}: {x['ema_top1'] if x['ema_top1'] is not None else x['top1']:.2f}"
                          for x in r["curve"])
        print(f"{name} trained {r['epochs']} epochs (seed {r['seed']}): {r['top1']:.2f}% (val after epoch {curve}; "
              f"{r['minutes']:.1f} min)")
    c = results["correlation"]
    print(f"\nMACs vs measured latency over {c['models']} distinct sampled networks: Spearman "
          f"{c['spearman_macs_latency']:.3f}, Kendall {c['kendall_macs_latency']:.3f}")
    if c["spearman_search_vs_quiet_latency"] is not None:
        print(f"latency measured during the search vs again on a quiet machine: Spearman "
              f"{c['spearman_search_vs_quiet_latency']:.3f}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    t = results["target"]["latency_ms"]
    for i, (name, s) in enumerate(results["searches"].items()):
        rows = s["trials"]
        left.scatter([r["latency_quiet_ms"] for r in rows], [100 * r["accuracy"] for r in rows],
                     s=14, color=f"C{i}", alpha=0.7, label=name)
    left.axvline(t, color="k", ls="--", lw=0.8, label=f"T = {t:.2f} ms")
    left.set_xlabel("latency, ms (batch 1, 1 thread, measured again)")
    left.set_ylabel("proxy accuracy on held-out images %")
    left.set_title("sampled networks of each search", fontsize=9)
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    models = results["models"]
    right.scatter([m["macs"] / 1e6 for m in models], [m["latency_ms"] for m in models], s=12, color="C0")
    c = results["correlation"]
    right.set_xlabel("MMACs")
    right.set_ylabel("latency, ms")
    right.set_title(f"MACs vs latency: Spearman {c['spearman_macs_latency']:.2f} over {c['models']} networks",
                    fontsize=9)
    right.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
