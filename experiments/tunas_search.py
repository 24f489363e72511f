"""TuNAS on Fashion-MNIST: how well the one-shot supernet ranks networks, and what the search finds.

TuNAS (Bender et al., arXiv 2008.06120) trains one supernet over the MnasNet space (32 px) while its
controller learns; its claim is that weight sharing beats random search at equal compute, which
holds only if a child's accuracy with the shared weights ranks networks as their standalone
training does. This experiment measures that first:

1. **the search**: ``effml search configs/search_tunas_fashion_mnist.yaml`` (per ``--seeds``; the supernet
   and the controller's architecture, written to ``tunas_s<seed>/``);
2. **proxy quality**: ``--members`` random members of the space (fixed by ``--member-seed``), each
   scored as a child of seed 0's supernet (BN statistics re-estimated on 16 training batches,
   top-1 on the held-out tenth of the training images) and trained standalone with one recipe
   (``configs/fashion_mnist.yaml`` for ``--epochs`` epochs on ``--limit-train`` images, scored on
   val); Kendall tau between the two rankings, with a bootstrap over members (10-90%);
3. **the found networks**: each seed's found spec trained standalone with the same recipe, next to
   the random members' spread (the distribution random search draws from).

Writes ``results.json`` and ``tunas_search.png`` (supernet vs standalone accuracy per member) in
``--out``. ``--quick``: a few minutes on the embedded digits (CI).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from _common import ROOT, effml, run, shipped_top1, spread, train

CONFIG = ROOT / "configs" / "search_tunas_fashion_mnist.yaml"
STANDALONE = ROOT / "configs" / "fashion_mnist.yaml"
QUICK_SEARCH = ["proxy.data.dataset=digits", "proxy.data.limit_train=null", "proxy.data.limit_val=null",
                "proxy.data.image_size=16", "proxy.data.batch_size=32", "proxy.data.holdout=0.2",
                "proxy.train.epochs=1", "search.space=bignas", "objective.target=1.0"]
QUICK_STANDALONE = ["data.dataset=digits", "data.image_size=16", "data.batch_size=32", "data.limit_train=512"]


def search(seed: int, out: Path, extra: list[str]) -> Path:
    """One TuNAS search (reused when finished, resumed when killed); its run directory."""
    run_dir = out / f"tunas_s{seed}"
    if not (run_dir / "tunas.json").is_file():
        args = [CONFIG, *extra, f"search.seed={seed}", f"proxy.train.seed={seed}", "proxy.train.threads=1",
                f"proxy.run.dir={run_dir}", f"search.storage={out / f'tunas_s{seed}.db'}"]
        resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
        run(effml("search", *args, *resume), out / f"tunas_s{seed}.log")
    return run_dir


def supernet_scores(run_dir: Path, specs: list[Any]) -> list[float]:
    """Held-out top-1 (%) of each spec as a child of the finished search's supernet, BN re-estimated."""
    from effml.search.oneshot.tunas import load_tunas_supernet

    trained = load_tunas_supernet(run_dir)
    batches = trained.trainer.calibration_batches(16)
    scores = []
    for spec in specs:
        spec = trained.supernet.child_spec(spec)
        scores.append(trained.evaluate(trained.calibrated(spec, batches), spec.resolution, "holdout")["top1"])
    return scores


def standalone(spec_path: Path, out: Path, overrides: list[str]) -> float:
    """Val top-1 (%) of the spec trained from scratch with the one recipe."""
    out.mkdir(parents=True, exist_ok=True)
    run_dir = train(STANDALONE, [f"model.name={spec_path}", *overrides], out / spec_path.stem)
    return shipped_top1(run_dir)


def kendall(a: list[float], b: list[float], seed: int = 0, rounds: int = 1000) -> dict[str, float]:
    """Kendall's tau-b of two score lists, with the 10-90% range of a bootstrap over their pairs."""
    from scipy.stats import kendalltau

    rng = np.random.default_rng(seed)
    a, b = np.asarray(a), np.asarray(b)
    taus = []
    for _ in range(rounds):
        idx = rng.integers(0, len(a), len(a))
        if len(set(idx)) > 2:
            taus.append(kendalltau(a[idx], b[idx]).statistic)
    taus = np.asarray([t for t in taus if np.isfinite(t)])
    return {"tau": float(kendalltau(a, b).statistic), "p10": float(np.percentile(taus, 10)),
            "p90": float(np.percentile(taus, 90)), "n": int(len(a))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--members", type=int, default=None, help="random members ranked (default 20; --quick 4)")
    p.add_argument("--member-seed", type=int, default=1234)
    p.add_argument("--epochs", type=int, default=1, help="standalone training epochs")
    p.add_argument("--limit-train", type=int, default=20000, help="standalone training images")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "experiment_tunas")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--search-overrides", nargs="*", default=[], help="key=value overrides of the search config")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (CI)")
    args = p.parse_args(argv)
    out: Path = args.out
    args.members = args.members or (4 if args.quick else 20)
    out.mkdir(parents=True, exist_ok=True)
    extra = (QUICK_SEARCH if args.quick else []) + args.search_overrides
    recipe = [f"train.epochs={args.epochs}", f"data.limit_train={args.limit_train}", "data.image_size=32",
              "train.log_interval=1000"] + (QUICK_STANDALONE if args.quick else [])

    with ThreadPoolExecutor(args.workers) as pool:
        runs = list(pool.map(lambda s: search(s, out, extra), args.seeds))

    from effml.search.study.config import build_space, load_search_config
    from effml.zoo import spec_to_json
    from effml.zoo.kinds import spec_from_dict

    cfg = load_search_config(CONFIG, extra)
    space = build_space(cfg)
    rng = random.Random(args.member_seed)
    members = [space.random_member(rng).spec for _ in range(args.members)]
    paths = []
    for i, spec in enumerate(members):
        path = out / "members" / f"member{i:02d}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(spec_to_json(spec))
        paths.append(path)
    found = [spec_from_dict(json.loads((r / "found_model.json").read_text())) for r in runs]
    for r, spec in zip(runs, found):
        (out / "members" / f"found_{r.name}.json").write_text(spec_to_json(spec))
    shared = supernet_scores(runs[0], members)
    with ThreadPoolExecutor(args.workers) as pool:
        alone = list(pool.map(lambda q: standalone(q, out / "standalone", recipe), paths))
        found_alone = list(pool.map(lambda r: standalone(out / "members" / f"found_{r.name}.json",
                                                         out / "standalone", recipe), runs))
    records = [json.loads((r / "tunas.json").read_text()) for r in runs]
    results = {
        "recipe": recipe, "quick": args.quick, "search_overrides": args.search_overrides,
        "members": [{"supernet_holdout_top1": s, "standalone_val_top1": a} for s, a in zip(shared, alone)],
        "kendall": kendall(shared, alone),
        "random_members_standalone": spread(alone),
        "found": [{"seed": s, "standalone_val_top1": a, "cost": rec["found"]["metrics"].get("latency_mmacs"),
                   "blocks": rec["found"]["blocks"], "search_cpu_s": rec["cpu_s"], "search_wall_s": rec["wall_s"]}
                  for s, a, rec in zip(args.seeds, found_alone, records)],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    k = results["kendall"]
    print(f"proxy quality: Kendall tau {k['tau']:.2f} (bootstrap 10-90%: {k['p10']:.2f} to {k['p90']:.2f}) "
          f"over {k['n']} random members")
    print(f"random members standalone val top-1: {json.dumps(results['random_members_standalone'])}")
    for f in results["found"]:
        print(f"TuNAS seed {f['seed']}: found {f['blocks']}, standalone val top-1 {f['standalone_val_top1']:.1f}%, "
              f"search {f['search_cpu_s'] / 60:.1f} CPU min")
    plot(results, out / "tunas_search.png")
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    xs = [m["supernet_holdout_top1"] for m in results["members"]]
    ys = [m["standalone_val_top1"] for m in results["members"]]
    ax.plot(xs, ys, "o", ms=4)
    k = results["kendall"]
    ax.set(xlabel="supernet child, held-out top-1 (%)", ylabel="standalone, val top-1 (%)",
           title=f"Kendall tau {k['tau']:.2f} ({k['p10']:.2f} to {k['p90']:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
