"""AutoHAS against random search and TPE over the same joint space of architectures and training
hyper-parameters, at small scale (Dong et al., arXiv 2006.03656).

The joint space is ``autohas`` (``effml search show autohas``): a MobileNetV2-like network with
elastic kernels, expansions and depths, and optimizer (SGD / AdamW), learning rate, weight decay,
label smoothing, mixup and dropout. Per seed:

1. AutoHAS: one run of ``effml autohas`` (shared weights, REINFORCE controller rewarded by the
   held-out accuracy of temporary weights) picks a member; the member is retrained from scratch.
2. Random search and TPE (Optuna, the search core): each trial a full proxy training of a sampled
   member with its sampled hyper-parameters (hyper-parameters drawn from their continuous
   ranges), scored on the same held-out images; the best trial's member is retrained from scratch.

Every final training uses the same recipe (``--final-epochs`` on the same training images) and is
scored on the validation set, which no search sees. Compute: CPU minutes at one torch thread, and
trainings-equivalent (a method's minutes over the median minutes of one proxy training). Then the
paper's observation that the ranking of architectures depends on the hyper-parameters: three
architectures trained under two hyper-parameter settings. Writes ``results.json`` and
``autohas_vs_baselines.png`` to ``--out``.

Usage: python experiments/autohas.py [--data fashion_mnist|digits] [--seeds 0 1] [--trials 8] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "autohas_fashion_mnist.yaml"

# What differs between the data sets; everything else is configs/autohas_fashion_mnist.yaml.
DATA = {
    "fashion_mnist": {"data.dataset": "fashion_mnist", "data.limit_train": 6000},
    "digits": {"data.dataset": "digits", "data.limit_train": None},
}


def overrides(settings: dict[str, Any]) -> list[str]:
    return [f"{k}={'null' if v is None else v}" for k, v in settings.items()]


def plain_config(data: dict[str, Any], extra: list[str] = ()) -> Any:
    """The experiment's training recipe (the AutoHAS config without its ``autohas`` section) with ``extra``."""
    from effml.search.oneshot.autohas import load_autohas_config
    from effml.train.config import load_config, training_config

    return load_config(None, list(extra), base=training_config(load_autohas_config(CONFIG, overrides(data))))


def final_training(config: Any, seed: int, epochs: int, run_dir: Path) -> dict[str, Any]:
    """Train a chosen member from scratch with the final recipe; its val top-1 and minutes."""
    from effml.train.config import config_from_dict
    from effml.train.engine import fit

    cfg = config_from_dict({"train": {"seed": seed, "epochs": epochs, "threads": 1, "eval_every": epochs},
                            "data": {"holdout": 0.0}, "run": {"dir": str(run_dir)}}, config)
    start = time.monotonic()
    result = fit(cfg, quiet=True)
    return {"val_top1": result.val["top1"], "minutes": (time.monotonic() - start) / 60}


def run_autohas_seed(data: dict[str, Any], seed: int, epochs: int, out: Path) -> dict[str, Any]:
    """One AutoHAS search (reused when its run directory holds a finished one)."""
    from effml.search.oneshot.autohas import (
        RESULT_JSON,
        load_autohas_config,
        load_autohas_result,
        run_autohas,
    )

    run_dir = out / f"autohas_seed{seed}"
    if not (run_dir / RESULT_JSON).is_file():
        cfg = load_autohas_config(CONFIG, overrides({**data, "train.seed": seed, "train.epochs": epochs,
                                                     "run.dir": run_dir}))
        run_autohas(cfg, quiet=True)
    record = load_autohas_result(run_dir)
    history = record["history"]
    k = max(1, len(history) // 10)
    return {"minutes": record["wall_s"] / 60, "cpu_minutes": record["cpu_s"] / 60, "hyper": record["chosen"]["hyper"],
            "config": str(run_dir / "chosen.yaml"),
            "entropy_start": statistics.mean(h["entropy"] for h in history[:k]),
            "entropy_end": statistics.mean(h["entropy"] for h in history[-k:]),
            "reward_start": statistics.mean(h["reward"] for h in history[:k]),
            "reward_end": statistics.mean(h["reward"] for h in history[-k:]),
            "distributions": record["distributions"]}


def baseline_search(data: dict[str, Any], strategy: str, seed: int, trials: int, epochs: int,
                    out: Path) -> dict[str, Any]:
    """Random search or TPE over the joint space: each trial a proxy training scored on held-out images."""
    from effml.search.study.config import build_space, load_search_config
    from effml.search.study.runner import run_search
    from effml.search.study.storage import finished_trials
    from effml.train.config import config_from_dict, config_to_dict

    proxy_dict = config_to_dict(plain_config(data, [f"train.epochs={epochs}", f"train.eval_every={epochs}"]))
    cfg = load_search_config(None, [
        "search.space=autohas", f"search.strategy={strategy}", f"search.trials={trials}", f"search.seed={seed}",
        f"search.storage={out / f'{strategy}_seed{seed}.db'}", f"search.study={strategy}", "search.workers=1",
        # TPE's model from the 4th trial on (Optuna's default waits for 10 random ones: with fewer
        # trials than that, TPE would be random search)
        *(["search.strategy_options={n_startup_trials: 3}"] if strategy == "tpe" else []),
        "search.threads=1", "objective.kind=reward", "objective.latency=flops", "objective.target=1e6",
        "objective.constraint=hard"])  # hard constraint far above any member: the reward is the accuracy
    cfg = config_from_dict({"proxy": {k: v for k, v in proxy_dict.items() if k != "run"}}, cfg)
    space = build_space(cfg)
    storage = out / f"{strategy}_seed{seed}.db"  # a rerun reuses the finished trials
    result = run_search(cfg, space, echo=lambda line: None, resume=storage.is_file())
    rows = []
    for t in finished_trials(result.study):
        if t.values is None:
            continue
        rows.append({"number": t.number, "accuracy": t.user_attrs["metrics"]["accuracy"],
                     "minutes": t.user_attrs["duration_s"] / 60, "params": dict(t.params),
                     "overrides": t.user_attrs["overrides"], "spec": t.user_attrs["spec"]})
    rows.sort(key=lambda r: r["number"])
    return {"trials": rows, "minutes": sum(r["minutes"] for r in rows)}


def best_so_far(rows: list[dict[str, Any]]) -> list[float]:
    best, out = 0.0, []
    for r in rows:
        best = max(best, r["accuracy"])
        out.append(best)
    return out


def baseline_config(best: dict[str, Any], data: dict[str, Any], out: Path, name: str) -> Any:
    """A training config of a baseline's best trial: its spec and its hyper-parameters."""
    from effml.zoo import spec_to_json
    from effml.zoo.kinds import spec_from_dict

    spec = spec_from_dict(best["spec"], name)
    path = out / f"{name}.json"
    path.write_text(spec_to_json(spec))
    return plain_config(data, [*best["overrides"], f"model.name={path}", f"data.image_size={spec.resolution}"])


def ranking_grid(data: dict[str, Any], hyper_sets: dict[str, list[str]], seed: int, epochs: int,
                 out: Path) -> dict[str, dict[str, float]]:
    """Val top-1 of three architectures (smallest, a middle one, largest) under each hyper-parameter set."""
    from effml.search.spaces.catalog import autohas_space
    from effml.zoo import spec_to_json

    space = dataclasses.replace(autohas_space(), hyper=())  # the architectures alone
    mid = {c.name: c.options[i % len(c.options)] for i, c in enumerate(space.choices)}
    archs = {"smallest": space.smallest().spec, "middle": space.member(mid).spec, "largest": space.largest().spec}
    grid: dict[str, dict[str, float]] = {}
    for hname, hyper in hyper_sets.items():
        for aname, spec in archs.items():
            path = out / f"grid_{aname}.json"
            path.write_text(spec_to_json(spec))
            cfg = plain_config(data, [*hyper, f"model.name={path}"])
            grid.setdefault(hname, {})[aname] = final_training(cfg, seed, epochs, out / f"grid_{hname}_{aname}")["val_top1"]
    return grid


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values), "n": len(values)}


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"random": "tab:gray", "tpe": "tab:blue", "autohas": "tab:red"}
    for seed, r in res["seeds"].items():
        for method in ("random", "tpe"):
            rows = r[method]["trials"]
            minutes = [sum(x["minutes"] for x in rows[:i + 1]) for i in range(len(rows))]
            a.plot(minutes, [100 * v for v in best_so_far(rows)], color=colors[method], alpha=0.7,
                   label=f"{method} best held-out" if seed == "0" else None)
        for method in ("random", "tpe", "autohas"):
            f = r["final"][method]
            b.scatter(f["search_minutes"], f["val_top1"], color=colors[method],
                      label=method if seed == "0" else None)
    a.set(xlabel="search CPU minutes (1 thread)", ylabel="best held-out top-1 % so far", title="baselines' search")
    b.set(xlabel="search CPU minutes (1 thread)", ylabel="val top-1 % after retraining", title="chosen member, retrained")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=sorted(DATA), default="fashion_mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--trials", type=int, default=6, help="trials per baseline search")
    p.add_argument("--search-epochs", type=int, default=2, help="epochs of each baseline trial")
    p.add_argument("--autohas-epochs", type=int, default=3, help="epochs of the AutoHAS run")
    p.add_argument("--final-epochs", type=int, default=3, help="epochs of each final training")
    p.add_argument("--no-grid", action="store_true", help="skip the architecture-ranking grid")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "experiment_autohas")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (CI)")
    args = p.parse_args(argv)
    data = dict(DATA[args.data])
    if args.quick:
        args.data, data = "digits", {**DATA["digits"], "data.image_size": 16, "data.batch_size": 32}
        args.seeds, args.trials, args.search_epochs, args.autohas_epochs, args.final_epochs = [0], 2, 1, 2, 1
    import torch

    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"settings": {**vars(args), "out": str(out), "data_overrides": data}, "seeds": {}}
    for seed in args.seeds:
        r: dict[str, Any] = {"autohas": run_autohas_seed(data, seed, args.autohas_epochs, out)}
        for method in ("random", "tpe"):
            r[method] = baseline_search(data, method, seed, args.trials, args.search_epochs, out)
        median_trial = statistics.median(t["minutes"] for m in ("random", "tpe") for t in r[m]["trials"])
        from effml.search.oneshot.autohas import load_autohas_config

        final = {}
        chosen = load_autohas_config(r["autohas"]["config"], saved=True)
        final["autohas"] = {**final_training(chosen, seed, args.final_epochs, out / f"final_autohas_seed{seed}"),
                            "search_minutes": r["autohas"]["minutes"]}
        for method in ("random", "tpe"):
            best = max(r[method]["trials"], key=lambda t: t["accuracy"])
            cfg = baseline_config(best, data, out, f"{method}_best_seed{seed}")
            final[method] = {**final_training(cfg, seed, args.final_epochs, out / f"final_{method}_seed{seed}"),
                             "search_minutes": r[method]["minutes"], "held_out": best["accuracy"],
                             "overrides": best["overrides"]}
        for method, f in final.items():
            f["trainings_equivalent"] = f["search_minutes"] / median_trial
        r["final"], r["median_trial_minutes"] = final, median_trial
        res["seeds"][str(seed)] = r
        print(f"seed {seed}: " + ", ".join(f"{m} {f['val_top1']:.2f}% after {f['search_minutes']:.1f} min"
                                            for m, f in final.items()), flush=True)
    # the learning rates of the baselines' best trials, against AutoHAS's choice
    top = sorted((t for r in res["seeds"].values() for m in ("random", "tpe") for t in r[m]["trials"]),
                 key=lambda t: -t["accuracy"])[:max(3, len(res["seeds"]))]
    lrs = [t["params"]["optim.lr"] for t in top]
    res["lr_check"] = {"baseline_top_lrs": lrs, "autohas_lrs": [r["autohas"]["hyper"]["optim.lr"] for r in res["seeds"].values()]}
    res["lr_check"]["within"] = [min(lrs) <= v <= max(lrs) for v in res["lr_check"]["autohas_lrs"]]
    if not args.no_grid:
        first = res["seeds"][str(args.seeds[0])]
        sets = {"autohas_choice": [f"{k}={v}" for k, v in first["autohas"]["hyper"].items()],
                "other": ["optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.0001",
                          "train.label_smoothing=0.0", "data.mixup=0.0", "model.dropout=0.0"]}
        grid = ranking_grid(data, sets, args.seeds[0], args.final_epochs, out)
        order = {h: sorted(g, key=lambda a: -g[a]) for h, g in grid.items()}
        res["ranking"] = {"val_top1": grid, "order": order, "changes": len({tuple(o) for o in order.values()}) > 1}
    res["summary"] = {m: {"val_top1": spread([r["final"][m]["val_top1"] for r in res["seeds"].values()]),
                          "search_minutes": spread([r["final"][m]["search_minutes"] for r in res["seeds"].values()]),
                          "trainings_equivalent": spread([r["final"][m]["trainings_equivalent"]
                                                          for r in res["seeds"].values()])}
                      for m in ("autohas", "random", "tpe")}
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    plot(res, out / "autohas_vs_baselines.png")
    print(f"\n{args.data}, seeds {args.seeds}: val top-1 % after retraining the chosen member "
          f"({args.final_epochs} epochs), against the search's compute")
    print(f"{'method':<10}{'val top-1 % (mean, min-max)':>30}{'CPU min':>10}{'trainings':>11}")
    for m, s in res["summary"].items():
        v, c, t = s["val_top1"], s["search_minutes"], s["trainings_equivalent"]
        print(f"{m:<10}{v['mean']:>14.2f} ({v['min']:.2f}-{v['max']:.2f}){'':>5}{c['mean']:>10.1f}{t['mean']:>11.1f}")
    for seed, r in res["seeds"].items():
        a = r["autohas"]
        print(f"seed {seed}: AutoHAS entropy {a['entropy_start']:.2f} -> {a['entropy_end']:.2f} of uniform, "
              f"reward {a['reward_start']:.3f} -> {a['reward_end']:.3f}; chosen "
              + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in a["hyper"].items()))
    print(f"learning rate: baselines' top trials {', '.join(f'{v:.3g}' for v in lrs)}; AutoHAS "
          f"{', '.join(f'{v:.3g}' for v in res['lr_check']['autohas_lrs'])} (within their range: {res['lr_check']['within']})")
    if "ranking" in res:
        for h, g in res["ranking"]["val_top1"].items():
            print(f"ranking under {h}: " + " > ".join(f"{a} {g[a]:.2f}" for a in res["ranking"]["order"][h]))
        print(f"the ranking {'changes' if res['ranking']['changes'] else 'does not change'} with the hyper-parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
