"""TuNAS on Fashion-MNIST: how well the one-shot supernet ranks networks, and what the search finds.

TuNAS (Bender et al., arXiv 2008.06120) trains one supernet over the MnasNet space (32 px) while its
controller learns; its claim is that weight sharing beats random search at equal compute, which
holds only if a child's accuracy with the shared weights ranks networks as their standalone
training does. This experiment measures that first:

1. **the search**: ``effml search configs/search_tunas_fashion_mnist.yaml`` (per ``--seeds``; the supernet
   and the controller's architecture, written to ``tunas_s<seed>/``);
2. **proxy quality**: ``--members`` random members of the space (fixed by ``--member-seed``), each
   scored as a child of seed 0's supernet as ``objective.accuracy: supernet`` scores a sample (BN
   statistics re-estimated on 16 training batches, top-1 on the held-out tenth of the training
   images; and the cheaper ``--holdout-images`` / ``--calibration-batches``) and trained standalone
   with one recipe (the search experiments' final recipe, ``_search.full_recipe``: AdamW and
   cosine for ``--epochs`` epochs on ``--limit-train`` images, EMA weights, scored on val);
   Kendall tau between the rankings, with a bootstrap over members (10-90%);
3. **the found networks**: each seed's found spec trained standalone with the same recipe for
   the first search seed's for each of ``--train-seeds`` (their spread is the noise floor), the
   other seeds' once (training seed 0);
4. **random search at equal compute**: as many random members as one TuNAS search's CPU time buys
   standalone trainings, the one with the best TuNAS reward (its standalone val top-1 and MACs)
   picked, resampled from the members: random search with a perfect evaluator, so a bound that
   favours random search over one that ranks by proxy trainings;
5. **cost**: the search's CPU time against a training of the space's largest member for as many
   steps (its time per step measured over 100 steps with the standalone recipe at batch 64);
6. **ablations** (``--variants``): searches of the first seed (or of ``--variant-seeds``) with other settings, e.g.
   ``uniform=tunas.delay=0.99`` (the controller never learns, so every child is sampled uniformly:
   is the ranking lost to the controller's focus on small children?) or
   ``lr4=tunas.controller_lr=0.02`` (does a controller that converges hit the target?): each one's
   supernet ranked over the same members and its found network trained once (its reward at the
   target from that training).

Writes ``results.json`` and ``tunas_search.png`` (supernet vs standalone accuracy per member, and
the found networks) in ``--out``. ``--quick``: a few minutes on the embedded digits (CI).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from _common import ROOT, fmt, minutes, save_figure, shipped_top1, spread, train, write_json
from _search import full_recipe, tunas_run

CONFIG = ROOT / "configs" / "search_tunas_fashion_mnist.yaml"
STANDALONE = ROOT / "configs" / "fashion_mnist.yaml"
QUICK_SEARCH = ["proxy.data.dataset=digits", "proxy.data.limit_train=null", "proxy.data.limit_val=null",
                "proxy.data.image_size=16", "proxy.data.batch_size=32", "proxy.data.holdout=0.2",
                "proxy.train.epochs=1", "search.space=bignas", "objective.target=1.0"]
QUICK_STANDALONE = ["data.dataset=digits", "data.image_size=16", "data.batch_size=32", "data.limit_train=512"]


def search(seed: int, out: Path, extra: list[str], variant: str = "") -> Path:
    """One TuNAS search (reused when finished, resumed when killed); its run directory,
    ``tunas_s<seed>`` (``tunas_<variant>_s<seed>`` for a variant's)."""
    name = f"tunas_{variant}_s{seed}" if variant else f"tunas_s{seed}"
    return tunas_run(CONFIG, out / name, [*extra, f"search.seed={seed}", f"proxy.train.seed={seed}"])


def parse_variants(texts: list[str], default_seeds: list[int]) -> dict[str, tuple[list[str], list[int]]]:
    """``NAME[:SEED,SEED...]=KEY=VALUE[,KEY=VALUE...]`` -> {NAME: (overrides, search seeds)}
    (``--variants``; without seeds, ``default_seeds``)."""
    variants = {}
    for text in texts:
        head, sep, overrides = text.partition("=")
        name, _, seeds = head.partition(":")
        try:
            chosen = [int(x) for x in seeds.split(",")] if seeds else list(default_seeds)
        except ValueError:
            chosen = []
        if not sep or not name.isidentifier() or "=" not in overrides or not chosen:
            raise SystemExit(f"--variants {text!r}: expected NAME[:SEED,...]=KEY=VALUE[,KEY=VALUE...], "
                             f"e.g. uniform=tunas.delay=0.99 or lr4:0,1,2=tunas.controller_lr=0.02")
        variants[name] = (overrides.split(","), chosen)
    return variants


def supernet_scores(trained: Any, specs: list[Any], holdout_images: int | None = None,
                    calibration_batches: int | None = None) -> tuple[list[float], float]:
    """Held-out top-1 (%) of each spec as a child of a finished search's supernet (``trained``:
    ``load_tunas_supernet``), scored as ``objective.accuracy: supernet`` scores a sample (BN
    re-estimated; ``holdout_images`` and ``calibration_batches`` as the objective's fields); and
    the seconds of one core per spec."""
    from effml.search.study.supernet_proxy import SupernetAccuracy

    scorer = SupernetAccuracy(trained, holdout_images, calibration_batches)
    scorer.top1(scorer.space.base)  # loads the calibration batches and held-out images once
    start = time.process_time()
    scores = [100 * scorer.top1(spec) for spec in specs]
    return scores, (time.process_time() - start) / len(specs)


def cached_scores(run_dir: Path, specs: list[Any]) -> list[float]:
    """``supernet_scores`` of a finished search's supernet for ``specs``, kept in its run directory
    (``member_scores.json``, keyed by the specs) so that a rerun does not score them again."""
    import hashlib

    from effml.search.oneshot.tunas import load_tunas_supernet
    from effml.zoo import spec_to_json

    key = hashlib.sha256("\n".join(spec_to_json(spec) for spec in specs).encode()).hexdigest()
    path = run_dir / "member_scores.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("members") == key:
            return kept["scores"]
    scores = supernet_scores(load_tunas_supernet(run_dir), specs)[0]
    write_json(path, {"members": key, "scores": scores})
    return scores


def standalone(spec_path: Path, out: Path, overrides: list[str], seed: int = 0) -> float:
    """Val top-1 (%) of the spec trained from scratch with the one recipe (training seed ``seed``)."""
    out.mkdir(parents=True, exist_ok=True)
    name = spec_path.stem + (f"_t{seed}" if seed else "")
    run_dir = train(STANDALONE, [f"model.name={spec_path}", *overrides, f"train.seed={seed}"], out / name)
    return shipped_top1(run_dir)


def largest_step_s(space: Any, out: Path, recipe: list[str], steps: int = 100) -> float:
    """Seconds a training step of the space's largest member takes on one thread with the standalone
    recipe (batch 64 at 32 px, as the supernet's): its session clock at step ``steps``, over ``steps``."""
    from effml.zoo import spec_to_json

    path = out / "members" / "largest.json"
    path.write_text(spec_to_json(space.largest().spec))
    run_dir = train(STANDALONE, [f"model.name={path}", *recipe, f"train.max_steps={steps}", "data.limit_val=256",
                                 f"train.log_interval={steps}"], out / "standalone" / "largest_steps")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r.get("kind") == "step" and r["global_step"] == steps)
    return row["session_s"] / steps


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


def random_search_pick(rewards: list[float], top1: list[float], k: int, seed: int = 0,
                       rounds: int = 10000) -> dict[str, float]:
    """What random search with ``k`` samples finds when it ranks them by their standalone reward
    (the true score, not a proxy: an upper bound on a random search of ``k`` proxy trainings): the
    standalone top-1 of the best-reward sample, median and 10-90% over ``rounds`` resampled searches."""
    rng = np.random.default_rng(seed)
    r, t = np.asarray(rewards), np.asarray(top1)
    picks = [t[idx[np.argmax(r[idx])]] for idx in (rng.choice(len(r), k, replace=False) for _ in range(rounds))]
    return {"k": k, "median": float(np.median(picks)), "p10": float(np.percentile(picks, 10)),
            "p90": float(np.percentile(picks, 90))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="search seeds")
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds of the first search seed's found network (their spread is the noise "
                        "floor); the other seeds' found networks train once")
    p.add_argument("--members", type=int, default=None, help="random members ranked (default 20; --quick 4)")
    p.add_argument("--member-seed", type=int, default=1234)
    p.add_argument("--epochs", type=int, default=3, help="standalone training epochs")
    p.add_argument("--limit-train", type=int, default=10000, help="standalone training images")
    p.add_argument("--holdout-images", type=int, default=1000,
                   help="the cheaper scoring: objective.holdout_images (its tau is reported beside the full one)")
    p.add_argument("--calibration-batches", type=int, default=4, help="the cheaper scoring: objective.calibration_batches")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "experiment_tunas")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--search-overrides", nargs="*", default=[], help="key=value overrides of the search config")
    p.add_argument("--variants", nargs="*", default=[], metavar="NAME[:SEEDS]=KEY=VALUE[,KEY=VALUE]",
                   help="ablations of the first seed's search, each with these overrides too (e.g. "
                        "uniform=tunas.delay=0.99): their supernets ranked over the same members (tau), their "
                        "found networks trained once")
    p.add_argument("--variant-seeds", type=int, nargs="+", default=None,
                   help="search seeds of a variant that names none (default: the first of --seeds)")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (CI)")
    args = p.parse_args(argv)
    out: Path = args.out
    args.members = args.members or (4 if args.quick else 20)
    if args.quick:
        args.train_seeds = args.train_seeds[:2]
    out.mkdir(parents=True, exist_ok=True)
    extra = (QUICK_SEARCH if args.quick else []) + args.search_overrides
    recipe = full_recipe(args.limit_train, args.epochs) + ["train.log_interval=1000"] + (
        QUICK_STANDALONE if args.quick else [])

    variants = parse_variants(args.variants, args.variant_seeds or args.seeds[:1])
    searches = [(s, out, extra, "") for s in args.seeds]
    variant_jobs = [(name, seed) for name, (_, seeds) in variants.items() for seed in seeds]
    searches += [(seed, out, extra + variants[name][0], name) for name, seed in variant_jobs]
    with ThreadPoolExecutor(args.workers) as pool:
        every = list(pool.map(lambda job: search(*job), searches))
    runs, variant_runs = every[:len(args.seeds)], every[len(args.seeds):]

    from effml.search.oneshot.tunas import load_tunas_supernet, tunas_reward
    from effml.search.study.config import build_space, load_search_config
    from effml.spec.plan import plan
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
    found_paths = []
    for r in every:
        spec = spec_from_dict(json.loads((r / "found_model.json").read_text()))
        found_paths.append(out / "members" / f"found_{r.name}.json")
        found_paths[-1].write_text(spec_to_json(spec))
    found_paths, variant_paths = found_paths[:len(runs)], found_paths[len(runs):]
    trained = load_tunas_supernet(runs[0])
    shared, shared_s = supernet_scores(trained, members)
    cheap, cheap_s = supernet_scores(trained, members, args.holdout_images, args.calibration_batches)
    variant_scores = [cached_scores(r, members) for r in variant_runs]
    trainings = [args.train_seeds] + [[0]] * (len(found_paths) - 1)  # the noise floor once: the first seed's
    jobs = [(q, 0) for q in paths] + [(q, s) for q, seeds in zip(found_paths, trainings) for s in seeds]
    jobs += [(q, 0) for q in variant_paths]
    with ThreadPoolExecutor(args.workers) as pool:
        done = dict(zip(jobs, pool.map(lambda job: standalone(job[0], out / "standalone", recipe, job[1]), jobs)))
    alone = [done[(q, 0)] for q in paths]
    macs = [plan(spec).macs() / 1e6 for spec in members]
    o, t = cfg.objective, cfg.tunas
    rewards = [tunas_reward(a / 100, m, o.target, t.beta, t.reward) for a, m in zip(alone, macs)]
    # a training's seconds on its one thread (its session clock; one thread: about its CPU time)
    train_cpu = statistics.fmean(60 * minutes(out / "standalone" / q.stem) for q in paths)
    records = [json.loads((r / "tunas.json").read_text()) for r in runs]
    search_cpu = statistics.fmean(rec["cpu_s"] for rec in records)
    # random search given the CPU time of one TuNAS search, each sample a standalone training
    k = min(len(members), max(1, round(search_cpu / train_cpu)))
    # the search's cost in trainings of the largest member for as many steps (batch 64 at 32 px)
    step_s = largest_step_s(space, out, recipe, 4 if args.quick else 100)
    steps = statistics.fmean(rec["steps"] for rec in records)
    results = {
        "recipe": recipe, "quick": args.quick, "search_overrides": args.search_overrides,
        "target": o.target, "unit": "MMACs",
        "members": [{"supernet_holdout_top1": s, "supernet_cheap_top1": c, "standalone_val_top1": a, "mmacs": m,
                     "reward": r} for s, c, a, m, r in zip(shared, cheap, alone, macs, rewards)],
        "kendall": kendall(shared, alone),
        # what each ranking follows: MACs (tau of each score with the members' MACs)
        "kendall_macs": {"supernet": kendall(shared, macs)["tau"], "standalone": kendall(alone, macs)["tau"]},
        "kendall_cheap": {**kendall(cheap, alone), "holdout_images": args.holdout_images,
                          "calibration_batches": args.calibration_batches},
        "score_cpu_s": {"full": shared_s, "cheap": cheap_s},
        "random_members_standalone": spread(alone),
        "standalone_training_cpu_s": train_cpu,
        "random_search_equal_cpu": random_search_pick(rewards, alone, k),
        "random_search_all_members": random_search_pick(rewards, alone, len(members), rounds=1),
        "cost": {"largest_step_s": step_s, "search_cpu_s": search_cpu, "search_steps": steps,
                 "largest_trainings": search_cpu / (step_s * steps)},
        "found": [{"seed": s, "standalone_val_top1": spread([done[(q, ts)] for ts in seeds]),
                   **found_record(rec, o.target, t, statistics.fmean(done[(q, ts)] for ts in seeds))}
                  for s, q, rec, seeds in zip(args.seeds, found_paths, records, trainings)],
        "variants": [{"name": name, "overrides": variants[name][0], "seed": seed,
                      "kendall": kendall(scores, alone), "kendall_macs": kendall(scores, macs)["tau"],
                      "standalone_val_top1": done[(q, 0)],
                      **found_record(json.loads((r / "tunas.json").read_text()), o.target, t, done[(q, 0)])}
                     for (name, seed), r, q, scores in zip(variant_jobs, variant_runs, variant_paths, variant_scores)],
    }
    write_json(out / "results.json", results)
    print_tables(results)
    plot(results, out / "tunas_search.png")
    return 0


def found_record(rec: dict[str, Any], target: float, tunas: Any, top1: float | None = None) -> dict[str, Any]:
    """What a search's ``tunas.json`` says of its found network and its cost; with its standalone
    ``top1`` (%), its reward at ``target`` (the search's own reward, ``tunas`` its settings)."""
    from effml.search.oneshot.tunas import tunas_reward

    history = rec["history"]
    mmacs = rec["found"]["metrics"].get("latency_mmacs")
    reward = tunas_reward(top1 / 100, mmacs, target, tunas.beta, tunas.reward) if top1 is not None else None
    return {"mmacs": mmacs, "blocks": rec["found"]["blocks"], "standalone_reward": reward,
            "search_cpu_s": rec["cpu_s"], "search_wall_s": rec["wall_s"], "steps": rec["steps"],
            "final_entropy": history[-1]["entropy"] if history else 1.0,
            "last_samples_mmacs": statistics.fmean(h["cost"] for h in history[-100:]) if history else None}


def print_tables(results: dict[str, Any]) -> None:
    k, c = results["kendall"], results["kendall_cheap"]
    cpu = results["score_cpu_s"]
    print(f"proxy quality: Kendall tau {k['tau']:.2f} (bootstrap 10-90%: {k['p10']:.2f} to {k['p90']:.2f}) "
          f"over {k['n']} random members, {cpu['full']:.2f} CPU s a child; with {c['holdout_images']} held-out "
          f"images and {c['calibration_batches']} calibration batches: {c['tau']:.2f} ({c['p10']:.2f} to "
          f"{c['p90']:.2f}), {cpu['cheap']:.2f} CPU s a child")
    m = results["kendall_macs"]
    print(f"tau with MACs: supernet {m['supernet']:.2f}, standalone {m['standalone']:.2f}")
    print(f"random members standalone val top-1: {fmt(results['random_members_standalone'])}")
    for f in results["found"]:
        print(f"TuNAS seed {f['seed']}: found {f['blocks']} ({f['mmacs']:.2f} MMACs, target {results['target']}; "
              f"the last 100 samples {f['last_samples_mmacs'] or 0:.2f}), standalone val top-1 "
              f"{fmt(f['standalone_val_top1'])} over training seeds (reward {f['standalone_reward']:.3f}); search "
              f"{f['search_cpu_s'] / 60:.1f} CPU min, "
              f"{f['steps']} steps, final entropy {f['final_entropy']:.2f}")
    for v in results["variants"]:
        k = v["kendall"]
        print(f"variant {v['name']} ({' '.join(v['overrides'])}): Kendall tau {k['tau']:.2f} ({k['p10']:.2f} to "
              f"{k['p90']:.2f}), with MACs {v['kendall_macs']:.2f}; found {v['mmacs']:.2f} MMACs (last 100 samples "
              f"{v['last_samples_mmacs'] or 0:.2f}), final entropy {v['final_entropy']:.2f}, standalone val top-1 "
              f"{v['standalone_val_top1']:.2f} (reward {v['standalone_reward']:.3f}), search seed {v['seed']}")
    r = results["random_search_equal_cpu"]
    cpu_s = results["standalone_training_cpu_s"]
    print(f"random search with the CPU time of one TuNAS search ({r['k']} standalone trainings of "
          f"{cpu_s / 60:.1f} CPU min, picked by their true reward): val top-1 {r['median']:.2f} "
          f"(10-90%: {r['p10']:.2f} to {r['p90']:.2f}); best reward of all {results['members'].__len__()} "
          f"members: {results['random_search_all_members']['median']:.2f}")
    c = results["cost"]
    print(f"cost: one search ({c['search_cpu_s'] / 60:.1f} CPU min) = {c['largest_trainings']:.2f} trainings of the "
          f"space's largest member for as many steps ({c['largest_step_s']:.3f} s a step on one thread)")


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: each member's supernet score against its standalone accuracy; right: standalone
    accuracy against MACs, the random members and each search's found network (training seeds'
    range), the target as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    ms = results["members"]
    left.plot([m["supernet_holdout_top1"] for m in ms], [m["standalone_val_top1"] for m in ms], "o", ms=4)
    k = results["kendall"]
    left.set(xlabel="supernet child, held-out top-1 (%)", ylabel="standalone, val top-1 (%)",
             title=f"Kendall tau {k['tau']:.2f} ({k['p10']:.2f} to {k['p90']:.2f})")
    right.plot([m["mmacs"] for m in ms], [m["standalone_val_top1"] for m in ms], "o", ms=4, label="random members")
    for f in results["found"]:
        a = f["standalone_val_top1"]
        right.errorbar([f["mmacs"]], [a["mean"]], yerr=[[a["mean"] - a["min"]], [a["max"] - a["mean"]]], fmt="*",
                       ms=10, label=f"TuNAS seed {f['seed']}")
    for v in results["variants"]:
        right.plot([v["mmacs"]], [v["standalone_val_top1"]], "P", ms=8, label=f"{v['name']} seed {v['seed']}")
    right.axvline(results["target"], color="grey", ls="--", lw=1, label="target T0")
    right.set(xlabel="MMACs", ylabel="standalone, val top-1 (%)", title="found vs random members")
    right.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
