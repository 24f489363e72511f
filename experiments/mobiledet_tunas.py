"""MobileDets' central ablation, searched as the paper searched it: TuNAS over an SSDLite supernet in
each search space, at one cost target, on the embedded shapes set (Xiong et al., "MobileDets:
Searching for Object Detection Architectures for Mobile Accelerators", arXiv 2004.14525, section 5
and table 2; TuNAS: Bender et al., arXiv 2008.06120).

The paper's claim: adding fused IBN (and Tucker convolutions) to the IBN layers of the search
space finds better detectors at the same cost. Per space (``--searches``: ``full`` = IBN + fused +
Tucker, ``ibn``, ``ibn_fused``) and search seed (``--search-seeds``), one TuNAS search of
``configs/search_tunas_mobiledet_shapes.yaml`` (``--search-overrides`` change it): a detection
supernet trained for 1,000 steps on 400 generated images, the controller rewarded by exp(-detection
loss) of held-out windows (``tunas.detection_signal``) and the whole detector's MACs at T0.

To fit the 45 minutes asked of an experiment on 2 cores, every search here is smaller (``SMALL``):
the generated shapes drawn at 96 px, T0 = 140.6M MACs (250M at 128 px scaled with the pixels:
still between the IBN space's smallest and largest detector), 750 steps (15 epochs), and each
reward scored on one held-out batch of 8 images (``tunas.reward_batch=1``; the config's 4 cost
about 40% more per step). Each found detector, and the reference (SSDLite on the base: the noise
floor, the spread of one network over training seeds), is trained alone with one recipe (the
search's proxy recipe at 96 px on all 500 training images for ``--epochs`` epochs) and scored by
AP50 on 128 generated val images. At 64 px nothing learned: the reference and a found detector
reached AP50 1.5 and 1.4 after 10 epochs (at 96 px 10.2 and 13.7, at 128 px about 30).

Writes ``results.json`` (per space: the found detectors' MACs against T0, their val AP50 per
search seed, the mean and spread; the reference's) and ``mobiledet_tunas.png`` to ``--out``; a
rerun continues unfinished searches (``--resume``) and reuses finished ones and trainings.

Cost (AMD EPYC with AVX-512 and VNNI, 2 runs side by side, 1 thread each): a search of 1,000
steps took 10.7 wall minutes at 64 px and 12.8 at 96 px; a 96 px training of 10 epochs 1.5-2.
With the defaults: 46 minutes with the searches first and the 9 trainings after them, 49.7 with
the reference beside the searches (the last search ran alone while the found detectors waited);
with each search training its detector as it ends and the reference last, about 44 minutes by
those runs' job durations (a search 8.3-10.6 minutes, a training 2.6-4.6) [estimate, not rerun].
The controller: at the TuNAS default learning rate of this config's first version (0.005) the
found detector (the most likely choice per layer) was mostly Tucker at half of T0 (33M MACs
against 62.5M at 64 px, 71M against 140.6M at 96 px), because after 750 learning steps the policy
was still near uniform (entropy 0.84 of its maximum); at 64 px, 0.02 found 57M and 0.05 62M (one
search each). The config now uses 0.05.

Usage: python experiments/mobiledet_tunas.py [--searches full ibn] [--search-seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import ROOT, fmt, publish, save_figure, spread
from _search import detection_recipe, save_spec, search_config, train_detectors, tunas_run
from mobiledet_search import SPACES, layer_kinds

CONFIG = ROOT / "configs" / "search_tunas_mobiledet_shapes.yaml"
SMALL = ["proxy.data.image_size=96", "proxy.detect.shapes_size=96", "objective.target=140.6",
         "proxy.train.epochs=15", "tunas.reward_batch=1"]  # the budget (above); T0: 250M MACs x (96 / 128)^2
QUICK = ["proxy.data.image_size=32", "proxy.detect.shapes_size=32", "proxy.detect.shapes_train=40",
         "proxy.detect.shapes_val=8", "proxy.train.max_steps=8", "proxy.train.epochs=2", "proxy.train.eval_every=2",
         "objective.target=15.6"]  # T0 at 32 px: 250M MACs at 128 px, over 16


def search(name: str, seed: int, args: argparse.Namespace) -> Path:
    """One TuNAS search (run directory ``OUT/NAME_sSEED``), continued when it was cut short."""
    return tunas_run(CONFIG, args.out / f"{name}_s{seed}",
                     [f"search.space={SPACES[name]}", f"search.seed={seed}", f"proxy.train.seed={seed}",
                      f"search.study={name}_s{seed}", *args.search_overrides])


def search_and_train(name: str, seed: int, args: argparse.Namespace, recipe: Path,
                     final_overrides: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One search, then its found detector trained alone at once (``args.seeds``, one at a time):
    the search's record and the training's."""
    run_dir, key = search(name, seed, args), f"{name}_s{seed}"
    record, spec = (json.loads((run_dir / f).read_text()) for f in ("tunas.json", "found_model.json"))
    found = {"space": name, "search_seed": seed, "run": str(run_dir), "spec": spec,
             "search_metrics": record["found"]["metrics"], "search_cpu_s": record["cpu_s"], "steps": record["steps"]}
    trained = train_detectors({key: spec}, {key: save_spec(spec, args.out / f"{key}.json")}, recipe,
                              argparse.Namespace(seeds=args.seeds, workers=1, out=args.out), final_overrides)
    return found, trained[key]


def train_reference(reference: dict[str, Any], path: Path, seed: int, args: argparse.Namespace, recipe: Path,
                    final_overrides: list[str]) -> dict[str, Any]:
    """The reference trained with one seed."""
    return train_detectors({"reference": reference}, {"reference": path}, recipe,
                           argparse.Namespace(seeds=[seed], workers=1, out=args.out), final_overrides)["reference"]


def merge_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One network's trainings with one seed each, as one record over the seeds (the first's cost and latency)."""
    ap50 = [a for r in runs for a in r["AP50"]]
    return {**runs[0], "AP50": ap50, "AP50_summary": spread(ap50), "minutes": [m for r in runs for m in r["minutes"]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--searches", nargs="+", default=["full", "ibn"], choices=list(SPACES))
    p.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of each found detector")
    p.add_argument("--reference-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds of the reference (the noise floor)")
    p.add_argument("--epochs", type=int, default=15, help="epochs of a standalone training")
    p.add_argument("--search-overrides", nargs="*", default=[],
                   help="KEY=VALUE changes to every search (after the experiment's own, SMALL)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "experiment_mobiledet_tunas")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (CI)")
    args = p.parse_args(argv)
    final_overrides: list[str] = []
    given = list(args.search_overrides)  # the user's, recorded (the experiment's own follow from --quick)
    if args.quick:
        args.search_seeds, args.seeds, args.reference_seeds, args.epochs = args.search_seeds[:1], [0], [0], 1
        args.search_overrides = QUICK + args.search_overrides
        final_overrides = ["train.max_steps=2"]
    else:
        args.search_overrides = SMALL + args.search_overrides
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from effml.search.study.config import build_space
    from effml.search.study.detection_proxy import search_network
    from effml.zoo import spec_to_dict

    cfg = search_config(dict(o.split("=", 1) for o in args.search_overrides), CONFIG)
    target = cfg.objective.target
    reference = spec_to_dict(search_network(cfg, build_space(cfg).base))
    recipe = detection_recipe(cfg, args.out, args.epochs)
    jobs = [(name, seed) for name in args.searches for seed in args.search_seeds]
    reference_path = save_spec(reference, args.out / "reference.json")
    with ThreadPoolExecutor(args.workers) as pool:
        # Every search trains its found detector as soon as it ends, and the reference's trainings
        # (which need no search) come last, one job per seed: 6 searches and then 9 trainings left
        # a worker idle for minutes while the last search ran. Latencies are measured while
        # another job runs.
        searched = [pool.submit(search_and_train, *job, args, recipe, final_overrides) for job in jobs]
        references = [pool.submit(train_reference, reference, reference_path, seed, args, recipe, final_overrides)
                      for seed in args.reference_seeds]
        done = [f.result() for f in searched]
        trained = {"reference": merge_seeds([f.result() for f in references])}
    found = {f"{name}_s{seed}": record for (name, seed), (record, _) in zip(jobs, done)}
    trained.update({f"{name}_s{seed}": result for (name, seed), (_, result) in zip(jobs, done)})
    spaces = {}
    for name in args.searches:
        keys = [f"{name}_s{seed}" for seed in args.search_seeds]
        ap50 = [trained[k]["AP50_summary"]["mean"] for k in keys]
        spaces[name] = {"space": SPACES[name], "val_AP50": spread(ap50),
                        "mmacs": [trained[k]["macs"] / 1e6 for k in keys],
                        "off_target": [trained[k]["macs"] / 1e6 / target - 1 for k in keys],
                        "layers": [layer_kinds(found[k]["spec"]) for k in keys]}
    results = {"settings": {"searches": args.searches, "search_seeds": args.search_seeds, "seeds": args.seeds,
                            "reference_seeds": args.reference_seeds, "epochs": args.epochs,
                            "search_overrides": given, "config": str(CONFIG), "quick": args.quick},
               "target_mmacs": target, "spaces": spaces, "found": found, "trained": trained,
               "noise_floor": trained["reference"]["AP50_summary"],
               "wall_minutes": (time.perf_counter() - started) / 60}
    publish(args.out, results, "mobiledet_tunas.png", plot, print_tables, also="the detectors' specs")
    return 0


def print_tables(results: dict[str, Any]) -> None:
    s, t = results["settings"], results["target_mmacs"]
    print(f"\nTuNAS searches at T0 = {t} MMACs (the whole detector), search seeds {s['search_seeds']}; "
          f"each found detector trained {s['epochs']} epochs, val AP50 (%)")
    print(f"{'space':<10} {'val AP50 mean (min-max)':>24}  {'MMACs of the found detectors':<30} IBN / fused / Tucker")
    for name, r in results["spaces"].items():
        macs = ", ".join(f"{m:.0f}" for m in r["mmacs"])
        layers = "; ".join(" / ".join(str(v) for v in ls.values()) for ls in r["layers"])
        print(f"{name:<10} {fmt(r['val_AP50'], 1):>24}  {macs:<30} {layers}")
    n, ref = results["noise_floor"], results["trained"]["reference"]
    print(f"reference (SSDLite on the base, {ref['macs'] / 1e6:.0f} MMACs) over training seeds {s['reference_seeds']}: "
          f"{fmt(n, 1)} (the noise floor)")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (name, r) in enumerate(results["spaces"].items()):
        keys = [f"{name}_s{seed}" for seed in results["settings"]["search_seeds"]]
        ax.scatter([results["trained"][k]["macs"] / 1e6 for k in keys],
                   [results["trained"][k]["AP50_summary"]["mean"] for k in keys], color=f"C{i}", label=name)
    ref = results["trained"]["reference"]
    n = ref["AP50_summary"]
    ax.errorbar([ref["macs"] / 1e6], [n["mean"]], yerr=[[n["mean"] - n["min"]], [n["max"] - n["mean"]]], fmt="ks",
                capsize=3, label="reference (training seeds)")
    ax.axvline(results["target_mmacs"], color="k", ls="--", lw=0.8, label="T0")
    ax.set(xlabel="detector MMACs", ylabel="val AP50 (%)", title="TuNAS-found SSDLite detectors per search space")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
