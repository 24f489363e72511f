"""What the search experiments share: a search of ``configs/search_fashion_mnist.yaml`` with
overrides, its finished trials as rows, one TuNAS search run (reused or resumed), the latency
target T of a space's reference network, latencies measured again one after another, and the full
training recipe of the winners.

Not an experiment itself; the search experiments (``experiments/mnasnet_search.py``, ``akd.py``,
``mixnet_kernels.py``, ``mobiledet_search.py``, ``mobiledet_tunas.py``, ``spinenet_search.py``,
``tunas_search.py``) import it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import ROOT, effml, minutes, run, shipped_top1, spread, train, write_json

SEARCH_CONFIG = ROOT / "configs" / "search_fashion_mnist.yaml"
RECIPE = ROOT / "configs" / "fashion_mnist.yaml"


def experiment_parser(doc: str, out: str, *, trials: int = 16, epochs: int = 3,
                      train_images: int | None = 10000, seeds: tuple[int, ...] = (0, 1)) -> argparse.ArgumentParser:
    """The options every search experiment has: trials per search, the searches' seed, the final
    trainings' seeds, epochs and images, workers, the output folder and ``--quick``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--trials", type=int, default=trials, help="trials per search")
    p.add_argument("--seed", type=int, default=0, help="the searches' seed")
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help="seeds of the final trainings")
    p.add_argument("--epochs", type=int, default=epochs, help="epochs of a final training")
    if train_images is not None:
        p.add_argument("--train-images", type=int, default=train_images, help="training images of a final training")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / out)
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (CI)")
    return p


def search_config(settings: dict[str, Any], config: Path = SEARCH_CONFIG) -> Any:
    """``config`` with ``section.key: value`` overrides."""
    from effml.search.study.config import load_search_config

    return load_search_config(config, [f"{k}={v}" for k, v in settings.items()])


def reference_target(cfg: Any, saved: Path) -> dict[str, Any]:
    """The space's reference network (its base spec): spec, MACs, parameters and its latency here
    (the median of three measurements), which is the target T. Kept in ``saved`` so that a rerun
    continues the same searches with the same T."""
    from effml.search.study.config import ObjectiveConfig, build_space
    from effml.search.study.cost import LatencyModel, spec_cost

    spec = build_space(cfg).base
    if saved.is_file():
        latency_ms = json.loads(saved.read_text())["latency_ms"]
    else:
        latency = LatencyModel(ObjectiveConfig(latency="measured"))
        latency_ms = statistics.median(latency(spec) for _ in range(3))
        write_json(saved, {"latency_ms": latency_ms})
    return {"spec": spec, "latency_ms": latency_ms, **spec_cost(spec)}


def search_rows(cfg: Any, name: str) -> list[dict[str, Any]]:
    """Run the search of ``cfg`` (continued when its storage exists); its finished trials as rows
    (number, reward, proxy accuracy (the search's ACC, a fraction), MACs, parameters, latency, spec,
    duration)."""
    from effml.search.study.config import build_space
    from effml.search.study.runner import run_search
    from effml.search.study.storage import finished_trials

    db = Path(cfg.search.storage)
    started = time.perf_counter()
    result = run_search(cfg, build_space(cfg), resume=db.is_file(), echo=lambda line: print(f"  {name}: {line}"))
    print(f"{name}: {result.finished} trials, {(time.perf_counter() - started) / 60:.1f} min in this run")
    rows = []
    for t in finished_trials(result.study):
        if t.values is None:
            continue
        m = t.user_attrs["metrics"]
        rows.append({"number": t.number, "reward": m["reward"], "accuracy": m["accuracy"], "macs": m["macs"],
                     "params": m["params"], "latency_ms": m.get("latency_ms"), "spec": t.user_attrs["spec"],
                     "duration_s": t.user_attrs["duration_s"]})
    return sorted(rows, key=lambda r: r["number"])


def tunas_run(config: Path, run_dir: Path, overrides: list[str]) -> Path:
    """One TuNAS search, ``effml search CONFIG OVERRIDES``, into ``run_dir`` (its study database
    ``RUN_DIR.db`` and log ``RUN_DIR.log`` beside it, one torch thread): reused when finished (its
    ``tunas.json``), resumed from its last checkpoint when cut short."""
    if not (run_dir / "tunas.json").is_file():
        args = [config, *overrides, "proxy.train.threads=1", f"proxy.run.dir={run_dir}",
                f"search.storage={run_dir.with_name(run_dir.name + '.db')}"]
        resume = ["--resume"] if (run_dir / "checkpoints" / "last.pt").is_file() else []
        run(effml("search", *args, *resume), run_dir.with_name(run_dir.name + ".log"))
    return run_dir


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: r["reward"])


def key_of(spec: dict[str, Any]) -> str:
    """A spec dict as a hashable key."""
    return json.dumps(spec, sort_keys=True)


def first_of_same(specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each name mapped to the first name whose spec is the same (a network two searches both
    found is trained once)."""
    first: dict[str, str] = {}
    return {name: first.setdefault(key_of(spec), name) for name, spec in specs.items()}


def remeasure(specs: dict[str, Any]) -> dict[str, float]:
    """Latency (ms) of each distinct spec dict, one after another (median of three measurements)."""
    from effml.search.study.config import ObjectiveConfig
    from effml.search.study.cost import LatencyModel
    from effml.zoo import spec_from_dict

    latency = LatencyModel(ObjectiveConfig(latency="measured"))
    return {key: statistics.median(latency(spec_from_dict(d)) for _ in range(3)) for key, d in specs.items()}


def save_spec(spec: dict[str, Any], path: Path) -> Path:
    """Write a spec dict as the spec JSON that ``effml train|bench|export`` take by path."""
    from effml.zoo import spec_from_dict, spec_to_json

    path.write_text(spec_to_json(spec_from_dict(spec)))
    return path


def full_recipe(train_images: int, epochs: int) -> list[str]:
    """The winners' full training: the proxy's optimizer and schedule (AdamW, cosine) on more
    images for more epochs, EMA weights shipped. The RMSProp-TF recipe of
    configs/fashion_mnist.yaml leaves MnasNet-space networks near 59% in 3 epochs."""
    return [f"data.limit_train={train_images}", f"train.epochs={epochs}", f"train.eval_every={epochs}",
            "optim.name=adamw", "optim.lr=0.003", "schedule.name=cosine", "schedule.warmup_epochs=0.3",
            "train.ema_decay=0.995", "data.image_size=32"]


def detection_recipe(cfg: Any, out: Path, epochs: int, val_images: int = 128) -> Path:
    """The final trainings of a detection search: its proxy recipe on all training images (no
    held-out part) for ``epochs`` epochs, scored once at the end on ``val_images`` generated val
    images; written to ``out/final_recipe.yaml``."""
    import yaml

    from effml.search.study.config import search_config_to_dict

    proxy = search_config_to_dict(cfg)["proxy"]
    proxy["data"]["holdout"] = 0.0
    proxy["detect"]["shapes_val"] = val_images
    proxy["train"].update(epochs=epochs, eval_every=epochs)
    path = out / "final_recipe.yaml"
    path.write_text(yaml.safe_dump(proxy, sort_keys=False))
    return path


def train_detectors(specs: dict[str, dict[str, Any]], paths: dict[str, Path], recipe: Path, args: Any,
                    overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Each detector (spec dict ``specs[name]``, written at ``paths[name]``) trained with ``recipe``
    for every seed of ``args.seeds`` in ``args.out/final_NAME_seedS``: its val AP50 (%) per seed and
    their spread, MACs, parameters, minutes, and its latency measured again."""
    from effml.search.study.cost import spec_cost
    from effml.zoo import spec_from_dict

    runs = train_all({(name, seed): ([f"model.name={path}", f"train.seed={seed}", "train.threads=1", *overrides],
                                     args.out / f"final_{name}_seed{seed}")
                      for name, path in paths.items() for seed in args.seeds}, args.workers, recipe)
    measured = remeasure({key_of(d): d for d in specs.values()})
    final = {}
    for name, d in specs.items():
        ap50 = [shipped_top1(runs[(name, s)], "AP50") for s in args.seeds]
        final[name] = {"spec": str(paths[name]), **spec_cost(spec_from_dict(d)), "latency_ms": measured[key_of(d)],
                       "AP50": ap50, "AP50_summary": spread(ap50), "minutes": [minutes(runs[(name, s)]) for s in args.seeds]}
    return final


def train_all(jobs: dict[Any, tuple[list[str], Path]], workers: int, config: Path = RECIPE) -> dict[Any, Path]:
    """``effml train CONFIG OVERRIDES`` (by default configs/fashion_mnist.yaml) for every job (key:
    (overrides, run directory)), ``workers`` at a time; finished runs are reused, unfinished ones
    resumed."""
    keys = list(jobs)
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(keys, pool.map(lambda k: train(config, *jobs[k]), keys)))
