"""MobileDets' detection-backbone search at small scale on the embedded shapes set (Xiong et al.,
"MobileDets: Searching for Object Detection Architectures for Mobile Accelerators", arXiv
2004.14525).

The paper's claim: a search space that adds fused IBN (a full KxK convolution in place of the 1x1
expansion and the depthwise convolution) and Tucker convolutions to the IBN layers finds better
detectors at the same latency, mostly on accelerators (DSP, EdgeTPU, GPU), where regular
convolutions use the hardware well; on mobile CPUs the searched networks still use IBN mostly.

Searches of ``configs/search_mobiledet_shapes.yaml`` (each sampled backbone wrapped into SSDLite,
trained from scratch on 400 generated 128 px images, scored by AP50 on the 100 held out; latency of
the whole detector measured here, batch 1, 1 thread, eager; REINFORCE with the soft reward), the
same trials, seed and target T (the latency of SSDLite on the space's base, every searchable layer
an IBN with expansion 4 and kernel 3) in each space:

- ``full``: IBN, fused IBN or Tucker per layer (the ``mobiledet`` space);
- ``ibn``: IBN only (``mobiledet_ibn``; the paper's baseline space).

Then each search's winner and the reference (SSDLite on the base) are trained for ``--epochs``
epochs on all 500 training images (the proxy's recipe, no held-out part) and scored by AP50 on the
128 generated val images (``--seeds`` seeds); the winners' latency is measured again one after
another.

Writes ``results.json``, ``mobiledet_search.png`` (each search's sampled detectors and Pareto
front of held-out AP50 against latency) and the winners as detector specs (``best_full.json``,
``best_ibn.json``; ``effml train|bench|export`` take them by path) to ``--out``; a rerun continues
unfinished searches and reuses finished trainings.

Usage: python experiments/mobiledet_search.py [--trials 10] [--seeds 0 1] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _common import ROOT, fmt, publish, save_figure, write_json
from _search import (
    best_row,
    detection_recipe,
    experiment_parser,
    save_spec,
    search_config,
    search_rows,
    train_detectors,
)

CONFIG = ROOT / "configs" / "search_mobiledet_shapes.yaml"
SPACES = {"full": "mobiledet", "ibn": "mobiledet_ibn", "ibn_fused": "mobiledet_ibn_fused"}
KINDS = {"ir": "IBN", "er": "fused IBN", "tucker": "Tucker"}


def config_of(name: str, target: float, args: argparse.Namespace) -> Any:
    return search_config({"search.space": SPACES[name], "objective.target": target, "search.trials": args.trials,
                          "search.seed": args.seed, "search.storage": args.out / f"{name}.db",
                          "search.study": name, **dict(args.proxy)}, CONFIG)


def target_ms(args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    """T: the latency of SSDLite on the space's base (median of three; kept in ``target.json``
    so that a rerun continues the same searches), and that reference detector's spec dict."""
    import statistics

    from effml.search import build_space, reference_latency
    from effml.search.study.detection_proxy import search_network
    from effml.zoo import spec_to_dict

    cfg = config_of("full", 1.0, args)
    space = build_space(cfg)
    reference = spec_to_dict(search_network(cfg, space.base))
    saved = args.out / "target.json"
    if not saved.is_file():
        write_json(saved, {"latency_ms": statistics.median(reference_latency(cfg, space) for _ in range(3))})
    return json.loads(saved.read_text())["latency_ms"], reference


def layer_kinds(spec: dict[str, Any]) -> dict[str, int]:
    """How many searchable layers (every backbone row after the first stage) of a detector spec
    dict are IBN, fused IBN and Tucker."""
    counts = dict.fromkeys(KINDS.values(), 0)
    for stage in spec["backbone"]["stages"][1:]:
        for row in stage:
            counts[KINDS[row.split("_", 1)[0]]] += 1
    return counts


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials no other trial beats in both latency (lower) and held-out AP50 (higher), by latency.
    A row's ``accuracy`` is the search's ACC, AP50 / 100 (``effml.search.study.detection_proxy.score``)."""
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r["latency_ms"], -r["accuracy"])):
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    return front


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "experiment_mobiledet_search", trials=10, epochs=10, train_images=None)
    p.add_argument("--searches", nargs="+", default=["full", "ibn"], choices=list(SPACES))
    args = p.parse_args(argv)
    args.proxy, final_set = {"search.workers": args.workers}, []
    if args.quick:
        args.trials, args.seeds, args.epochs = 2, args.seeds[:1], 1
        args.proxy.update({"proxy.train.max_steps": 2, "proxy.detect.shapes_train": 40, "proxy.detect.shapes_val": 8})
        final_set = ["train.max_steps=2"]
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)

    target, reference = target_ms(args)
    print(f"target T: {target:.2f} ms (SSDLite on the space's base, every searchable layer IBN e4 k3)")
    trials = {name: search_rows(config_of(name, target, args), name) for name in args.searches}

    specs = {"reference": reference, **{name: best_row(rows)["spec"] for name, rows in trials.items()}}
    paths = {name: save_spec(d, args.out / ("reference.json" if name == "reference" else f"best_{name}.json"))
             for name, d in specs.items()}
    recipe = detection_recipe(config_of("full", target, args), args.out, args.epochs)
    final = train_detectors(specs, paths, recipe, args, final_set)
    for name, d in specs.items():
        final[name]["layers"] = layer_kinds(d)
    searches = {}
    for name, rows in trials.items():
        best = best_row(rows)
        under = [100 * r["accuracy"] for r in rows if r["latency_ms"] <= target]  # AP50 in percent
        searches[name] = {"space": SPACES[name], "best": {k: v for k, v in best.items() if k != "spec"},
                          "best_layers": layer_kinds(best["spec"]),
                          "layers_sampled": {k: sum(layer_kinds(r["spec"])[k] for r in rows) for k in KINDS.values()},
                          "best_AP50_under_T": max(under) if under else None,
                          "front": [{"number": r["number"], "latency_ms": r["latency_ms"], "AP50": 100 * r["accuracy"]}
                                    for r in pareto(rows)],
                          "trials": rows}
    results = {"settings": {"trials": args.trials, "seed": args.seed, "seeds": args.seeds, "epochs": args.epochs,
                            "searches": args.searches, "config": str(CONFIG), "quick": args.quick},
               "target": {"latency_ms": target}, "searches": searches, "final": final,
               "wall_minutes": (time.perf_counter() - started) / 60}
    publish(args.out, results, "mobiledet_search.png", plot, print_tables,
            also=f"the detectors' specs ({', '.join(p.name for p in paths.values())})")
    return 0


def print_tables(results: dict[str, Any]) -> None:
    s, t = results["settings"], results["target"]["latency_ms"]
    print(f"\nsearches ({s['trials']} trials each, seed {s['seed']}); T = {t:.2f} ms; ACC = AP50 / 100 on "
          f"held-out training images; AP50 in percent")
    print(f"{'search':<10} {'best reward':>11} {'its AP50':>8} {'its ms':>7} {'best AP50 <= T':>14}  "
          f"layers of the winner (IBN / fused / Tucker)  layers sampled")
    for name, r in results["searches"].items():
        b, under = r["best"], r["best_AP50_under_T"]
        layers = " / ".join(str(v) for v in r["best_layers"].values())
        sampled = " / ".join(str(v) for v in r["layers_sampled"].values())
        print(f"{name:<10} {b['reward']:11.4f} {100 * b['accuracy']:8.1f} {b['latency_ms']:7.2f} "
              f"{'-' if under is None else f'{under:.1f}':>14}  {layers:>42}  {sampled}")
        print(f"{'':<10} Pareto front (ms, AP50): " + ", ".join(f"({p['latency_ms']:.1f}, {p['AP50']:.1f})"
                                                               for p in r["front"]))
    n = len(s["seeds"])
    print(f"\nthe winners and the reference trained for {s['epochs']} epochs on all training images; val AP50, "
          f"mean (min-max) over {n} seed(s)")
    print(f"{'detector':<10} {'MMACs':>7} {'ms':>6} {'params':>10} {'val AP50':>22}  IBN / fused / Tucker")
    for name, f in sorted(results["final"].items(), key=lambda kv: kv[1]["latency_ms"]):
        print(f"{name:<10} {f['macs'] / 1e6:7.1f} {f['latency_ms']:6.2f} {f['params']:10,d} "
              f"{fmt(f['AP50_summary'], 1):>22}  {' / '.join(str(v) for v in f['layers'].values())}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for i, (name, r) in enumerate(results["searches"].items()):
        rows = r["trials"]
        left.scatter([x["latency_ms"] for x in rows], [100 * x["accuracy"] for x in rows], s=14, color=f"C{i}",
                     alpha=0.6, label=f"{name} ({r['space']})")
        front = r["front"]
        left.step([p["latency_ms"] for p in front], [p["AP50"] for p in front], where="post", color=f"C{i}", lw=1)
    t = results["target"]["latency_ms"]
    left.axvline(t, color="k", ls="--", lw=0.8, label=f"T = {t:.1f} ms")
    left.set_xlabel("detector latency, ms (batch 1, 1 thread, eager, during the search)")
    left.set_ylabel("AP50 (%) on held-out training images")
    left.set_title("sampled detectors and each search's Pareto front", fontsize=9)
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    for i, (name, f) in enumerate(results["final"].items()):
        s = f["AP50_summary"]
        right.errorbar([f["latency_ms"]], [s["mean"]], yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]],
                       fmt="o", capsize=3, color=f"C{i}", label=name)
    right.set_xlabel("latency, ms (measured again)")
    right.set_ylabel("val AP50 (%, min-max over seeds)")
    right.set_title("winners and reference, trained longer", fontsize=9)
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
