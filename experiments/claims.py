"""The README's table of the papers' claims, regenerated from the experiments' ``results.json`` files.

Each ``experiments/NAME.py`` reproduces one paper's claim at small scale and writes ``results.json``
to its output folder under ``runs/`` (``experiment_NAME`` mostly; ``tunas_search.py`` writes
``experiment_tunas``, ``ensembles.py`` ``ensembles``). This script only reads those files (it never
trains or runs an experiment) and prints one row per claim: the experiment and the claim, the
command that produced the results, the seeds, the effect the claim is about per seed (the
claimed-better arm minus the baseline arm, in points) with its mean and min-max spread, the noise
floor where the results give one, and a verdict by one rule for every claim (``verdict``). A
missing results file gives a row naming the command to run; a ``--quick`` run is a "smoke run".

Usage: python experiments/claims.py [--runs DIR] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import shlex
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from math import comb
from pathlib import Path
from statistics import fmean
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def verdict(effects: Sequence[float], noise_floor: float | None, baseline_spread: float = 0.0,
            quick: bool = False) -> str:
    """The one rule every claim is judged by.

    ``effects``: the claimed effect per seed (positive: the claim's direction). The threshold is the
    ``noise_floor`` (the spread of one network trained with different seeds) where the results give
    one, else ``baseline_spread`` (the baseline arm's max - min across seeds).

    - "smoke run": the results come from a ``--quick`` run, never judged;
    - "reproduced": every seed's effect is positive and the mean effect exceeds the threshold;
    - "not reproduced": the mean effect is <= 0 and no seed's effect exceeds the threshold;
    - "within noise": anything else.
    """
    if quick:
        return "smoke run"
    if not effects:
        raise ValueError("no effects to judge")
    threshold = baseline_spread if noise_floor is None else noise_floor
    if all(e > 0 for e in effects) and fmean(effects) > threshold:
        return "reproduced"
    if fmean(effects) <= 0 and not any(e > threshold for e in effects):
        return "not reproduced"
    return "within noise"


@dataclass(frozen=True)
class Row:
    """One claim's row. An extractor fills the claim's fields; ``collect`` adds the experiment, its
    main claim where the row names none, the command and whether it was a quick run."""

    claim: str = ""
    seeds: str = ""
    effects: tuple[float, ...] = ()
    unit: str = "points"
    noise_floor: float | None = None
    baseline_spread: float = 0.0
    threshold_source: str = "the baseline arm's seed spread"  # what the noise floor or the spread is
    note: str = ""
    lacking: str = ""  # why no verdict can be given, if so
    experiment: str = ""
    command: str = ""
    quick: bool = False

    @property
    def verdict(self) -> str:
        return self.lacking or verdict(self.effects, self.noise_floor, self.baseline_spread, self.quick)


@dataclass(frozen=True)
class Extractor:
    """One experiment's results: its folder under ``--runs``, title, main claim, the settings it
    records as command-line options, how to read those settings, and the function making its rows."""

    folder: str
    title: str
    claim: str
    options: tuple[str, ...]
    settings: Callable[[dict[str, Any]], dict[str, Any]]
    rows: Callable[[dict[str, Any]], list[Row]]


EXTRACTORS: dict[str, Extractor] = {}  # experiments/NAME.py -> its extractor, in the README's order


def extractor(name: str, title: str, claim: str, options: Sequence[str], folder: str = "",
              settings: Callable[[dict[str, Any]], dict[str, Any]] = lambda r: r["settings"]) -> Callable:
    """Register the decorated function as the extractor of ``experiments/NAME.py``."""
    def register(fn: Callable[[dict[str, Any]], list[Row]]) -> Callable:
        EXTRACTORS[name] = Extractor(folder or f"experiment_{name}", title, claim, tuple(options), settings, fn)
        return fn
    return register


def paired(claimed: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """Row fields of a comparison paired by seed: the effects (claimed - baseline) and the baseline's spread."""
    return {"effects": tuple(a - b for a, b in zip(claimed, baseline, strict=True)),
            "baseline_spread": max(baseline) - min(baseline)}


def seeds(kind: str, values: Sequence[Any]) -> str:
    """'2 training seeds (0, 1)'."""
    return f"{len(values)} {kind} seed{'s' * (len(values) > 1)} ({', '.join(map(str, values))})"


def command(name: str, settings: dict[str, Any], options: Sequence[str], quick: bool) -> str:
    """``python experiments/NAME.py`` with the ``options`` its results recorded (``--quick`` alone for
    a smoke run, whose settings are what ``--quick`` chose)."""
    words = ["python", f"experiments/{name}.py"]
    for key in [] if quick else options:
        value, flag = settings.get(key), "--" + key.replace("_", "-")
        values = [shlex.quote(str(v)) for v in (value if isinstance(value, list) else [value])]
        if value is True:
            words.append(flag)
        elif value is not None and value is not False and value != []:  # --set is given once per value
            words += [w for v in values for w in (flag, v)] if key == "set" else [flag, *values]
    return " ".join(words + ["--quick"] * quick)


@extractor("compound_scaling", "EfficientNet compound scaling (arXiv 1905.11946, section 3.3)",
           "balancing width, depth and resolution beats any one of them at equal FLOPs",
           ("seeds", "epochs", "train_images", "ratios", "set"))
def compound_scaling(r: dict[str, Any]) -> list[Row]:
    """Effect: per seed, the compound rule's val top-1 minus the best single-dimension rule's (best by
    mean at each MACs ratio; 2x: the grid's points), averaged over the ratios."""
    by_ratio: dict[float, dict[str, list[float]]] = {}
    for row in r["scaled"]:
        by_ratio.setdefault(row["ratio"], {})[row["method"]] = row["top1"]
    best = {x: max((m for m in ms if m != "compound"), key=lambda m: fmean(ms[m])) for x, ms in by_ratio.items()}
    n = range(len(r["settings"]["seeds"]))
    return [Row(seeds=seeds("training", r["settings"]["seeds"]),
                note="best single: " + ", ".join(f"{m} at {x:g}x" for x, m in sorted(best.items())),
                **paired([fmean([ms["compound"][i] for ms in by_ratio.values()]) for i in n],
                         [fmean([by_ratio[x][m][i] for x, m in best.items()]) for i in n]))]


@extractor("mnasnet_search", "MnasNet search (arXiv 1807.11626)",
           "a searched network beats the hand-made MobileNetV2 at similar latency",
           ("trials", "seed", "seeds", "epochs", "train_images", "searches", "long_epochs"))
def mnasnet_search(r: dict[str, Any]) -> list[Row]:
    """Effects: per training seed, the REINFORCE soft-reward winner's val top-1 minus the reference
    MobileNetV2's; and minus random search's winner (one search seed: training seeds only)."""
    s, f = r["settings"], r["final"]
    main = "reinforce_soft" if "reinforce_soft" in f else s["searches"][0]
    seed_text = f"1 search seed ({s['seed']}); {seeds('training', s['seeds'])}"
    note = (f"{main}'s winner at {f[main]['latency_ms'] / f['reference']['latency_ms']:.2f}x the reference's "
            f"latency; MACs-latency Spearman {r['correlation']['spearman_macs_latency']:.2f}")
    long = r.get("long", {})
    if {main, "reference"} <= set(long):  # --long-epochs: both trained longer once
        note += (f"; at {long[main]['epochs']} epochs (seed 0) the winner {long[main]['top1']:.1f}%, "
                 f"the reference {long['reference']['top1']:.1f}%")
    rows = [Row(seeds=seed_text, note=note, **paired(f[main]["top1"], f["reference"]["top1"]))]
    if {"reinforce_soft", "random_soft"} <= set(f):
        rows.append(Row("REINFORCE finds better networks than random search", seed_text,
                        **paired(f["reinforce_soft"]["top1"], f["random_soft"]["top1"])))
    return rows


@extractor("training_methods", "AdvProp and ensembles on Fashion-MNIST (arXiv 1911.09665, 2005.00570)",
           "adversarial examples with auxiliary BN improve clean accuracy",
           ("epochs", "train_images", "k", "ensemble_seeds", "advprop_seeds", "epsilon"))
def training_methods(r: dict[str, Any]) -> list[Row]:
    """Effects: AdvProp's val top-1 minus the plain member's of the same seed; the ensemble's minus the
    big model's of the same ensemble seed. Noise floor: the plain member over all its seeds."""
    s, m, adv = r["settings"], r["member"], r["advprop"]
    floor = {"noise_floor": max(m["top1"]) - min(m["top1"]), "threshold_source": f"the member over {len(m['top1'])} seeds"}
    plain = dict(zip(m["seeds"], m["top1"]))
    both = [(a, plain[seed], seed) for a, seed in zip(adv["top1"], adv["seeds"]) if seed in plain]
    return [Row(seeds=seeds("training", [x[2] for x in both]), **{**paired(*list(zip(*both))[:2]), **floor}),
            Row(f"k={s['k']} small models beat one model scaled to their FLOPs",
                seeds(f"ensemble (members seed+0..{s['k'] - 1})", s["ensemble_seeds"]),
                note=f"ensemble minus its mean member {r['ensemble']['gain_over_mean_member']['mean']:+.2f}",
                **{**paired(r["ensemble"]["top1"], r["big"]["top1"]), **floor})]


@extractor("ensembles", "Ensembles on the digits (arXiv 2005.00570)",
           "k small models beat one model scaled to their FLOPs", ("k", "epochs", "image_size", "seed"),
           folder="ensembles")
def ensembles(r: dict[str, Any]) -> list[Row]:
    """Effect: the ensemble's val top-1 minus the big model's (one run). Noise floor: the members, one
    network over k seeds."""
    members, seed, k = [m["top1"] for m in r["members"]], r["settings"]["seed"], r["settings"]["k"]
    return [Row(seeds=f"1 run (members seeds {seed}-{seed + k - 1}, big model {seed})",
                effects=(r["ensemble"]["top1"] - r["big"]["top1"],), noise_floor=max(members) - min(members),
                threshold_source=f"the member over {len(members)} seeds")]


def mixnet_settings(r: dict[str, Any]) -> dict[str, Any]:
    """The MixNet run's settings, less the REINFORCE options (trials, seed) when it ran TuNAS alone."""
    s = dict(r["settings"])
    if s.get("searches") == ["tunas"]:
        for key in ("trials", "seed"):
            s.pop(key, None)
    return s


@extractor("mixnet_kernels", "MixNet kernels (arXiv 1907.09595)",
           "mixing kernel sizes per layer beats one size at equal FLOPs",
           ("searches", "search_seeds", "trials", "seed", "seeds", "epochs", "train_images", "search_overrides"),
           settings=mixnet_settings)
def mixnet_kernels(r: dict[str, Any]) -> list[Row]:
    """Effects against the all-5x5 network (the searches' T), paired by training seed: TuNAS's network
    of each search seed (trained with that seed), each REINFORCE winner (over the training seeds) and
    MixNet-S as published. Noise floor: the all-5x5 network over its training seeds."""
    s, f, claim = r["settings"], r["final"], EXTRACTORS["mixnet_kernels"].claim
    k5 = dict(zip(f["single_k5"].get("seeds", s["seeds"]), f["single_k5"]["top1"]))
    floor = {"noise_floor": max(k5.values()) - min(k5.values()),
             "threshold_source": f"the all-5x5 network over {seeds('training', list(k5))}"}

    def against_k5(name: str) -> tuple[float, ...]:
        return tuple(t - k5[seed] for seed, t in zip(f[name].get("seeds", s["seeds"]), f[name]["top1"], strict=True))

    rows = []
    for name in (n for n in f if n.startswith("best_")):
        rows.append(Row(f"{claim} (REINFORCE's winner, {name[5:]} reward)",
                        f"1 search seed ({s['seed']}); {seeds('training', f[name].get('seeds', s['seeds']))}",
                        against_k5(name), note=f"{f[name]['macs'] / 1e6:.2f} MMACs against the 5x5's "
                                               f"{f['single_k5']['macs'] / 1e6:.2f}", **floor))
    found = sorted((n for n in f if n.startswith("tunas_s")), key=lambda n: int(n[7:]))
    if found:
        macs = ", ".join(f"{f[n]['macs'] / 1e6:.2f}" for n in found)
        rows.append(Row(f"{claim} (TuNAS's network)", f"{seeds('search', [int(n[7:]) for n in found])}; "
                        "each trained with its search seed", tuple(e for n in found for e in against_k5(n)),
                        note=f"{macs} MMACs against the 5x5's {f['single_k5']['macs'] / 1e6:.2f}", **floor))
    rows.append(Row("MixNet-S as published beats the all-5x5 network at about its FLOPs",
                    seeds("training", f["mixnet_s"].get("seeds", s["seeds"])), against_k5("mixnet_s"), **floor))
    return rows


@extractor("akd", "AKD (arXiv 1911.09074)",
           "searching the student with the teacher's KD as reward finds a better student for that teacher",
           ("trials", "seed", "seeds", "epochs", "train_images", "teacher_epochs", "teacher_images"))
def akd(r: dict[str, Any]) -> list[Row]:
    """Effects: per seed, AKD's students minus NAS's under AKD's teacher (mean over the teachers); and the
    teacher preference: own-teacher pairings minus crossed ones (the interaction, as summed pairs)."""
    s, f, (a, b) = r["settings"], r["final"], list(r["teachers"])[:2]
    n = range(len(s["seeds"]))

    def top1(student: str, teacher: str) -> list[float]:
        return f[student][teacher]["top1"]

    seed_text = f"1 search seed ({s['seed']}) each; {seeds('training', s['seeds'])}"
    return [Row(seeds=seed_text, **paired([(top1(f"akd_{a}", a)[i] + top1(f"akd_{b}", b)[i]) / 2 for i in n],
                                          [(top1("nas", a)[i] + top1("nas", b)[i]) / 2 for i in n])),
            Row("different teachers prefer different students", seed_text,
                **paired([top1(f"akd_{a}", a)[i] + top1(f"akd_{b}", b)[i] for i in n],
                         [top1(f"akd_{b}", a)[i] + top1(f"akd_{a}", b)[i] for i in n]))]


@extractor("mobiledet_search", "MobileDet search (arXiv 2004.14525)",
           "IBN + fused IBN + Tucker finds better detectors than IBN alone at the same latency",
           ("trials", "seed", "seeds", "epochs", "searches"))
def mobiledet_search(r: dict[str, Any]) -> list[Row]:
    """Effect: per seed, val AP50 of the full space's winner minus the IBN space's winner."""
    s, f = r["settings"], r["final"]
    return [Row(seeds=f"1 search seed ({s['seed']}) each; {seeds('training', s['seeds'])}", unit="AP50 points",
                note=f"full at {f['full']['latency_ms']:.1f} ms, ibn {f['ibn']['latency_ms']:.1f}; the reference "
                     f"{fmean(f['reference']['AP50']):.1f} AP50 at {f['reference']['latency_ms']:.1f}",
                **paired(f["full"]["AP50"], f["ibn"]["AP50"]))]


@extractor("mobiledet_tunas", "MobileDets searched by TuNAS (arXiv 2004.14525, section 5)",
           "adding fused IBN (and Tucker) to the IBN space finds better detectors at the same cost",
           ("searches", "search_seeds", "seeds", "reference_seeds", "epochs", "search_overrides"))
def mobiledet_tunas(r: dict[str, Any]) -> list[Row]:
    """Effect: per search seed, val AP50 of each larger space's found detector minus the IBN space's
    (same search seed). Noise floor: the reference over its training seeds."""
    s, larger = r["settings"], [x for x in ("full", "ibn_fused") if x in r["spaces"]]
    if "ibn" not in r["spaces"] or not larger:
        return [Row(lacking="no verdict: the results need the ibn space and full or ibn_fused")]

    def ap50(space: str) -> list[float]:
        return [r["trained"][f"{space}_s{seed}"]["AP50_summary"]["mean"] for seed in s["search_seeds"]]

    return [Row(f"the {x} space beats the ibn space at the same cost", unit="AP50 points",
                seeds=f"{seeds('search', s['search_seeds'])}; {seeds('training', s['seeds'])} each",
                noise_floor=r["noise_floor"]["max"] - r["noise_floor"]["min"], **paired(ap50(x), ap50("ibn")),
                threshold_source=f"the reference over {len(s['reference_seeds'])} training seeds") for x in larger]


@extractor("spinenet_search", "SpineNet search (arXiv 1912.05027, section 3.3)",
           "a scale-permuted backbone beats the scale-decreased ResNet-FPN at equal FLOPs",
           ("trials", "seed", "seeds", "epochs"))
def spinenet_search(r: dict[str, Any]) -> list[Row]:
    """Effects: per seed, val AP50 of the found table and of SpineNet-49's minus the scale-decreased one."""
    s, f = r["settings"], r["final"]
    return [Row(f"{EXTRACTORS['spinenet_search'].claim} ({name})", unit="AP50 points",
                seeds=f"1 search seed ({s['seed']}); {seeds('training', s['seeds'])}",
                **paired(f[name]["AP50"], f["scale_decreased"]["AP50"])) for name in ("found", "spinenet49")]


@extractor("bignas", "BigNAS (arXiv 2003.11142)",
           "supernet children match or beat the same networks trained alone, with no retraining",
           ("data", "seeds", "targets", "ablation_target", "variants"),
           settings=lambda r: {**r["settings"], "targets": ",".join(f"{t / 1e6:g}M" for t in r["settings"]["targets"]),
                               "ablation_target": f"{r['settings']['ablation_target'] / 1e6:g}M"})
def bignas(r: dict[str, Any]) -> list[Row]:
    """Effects: per seed, the supernet child's val top-1 minus the same spec trained alone, averaged
    over the MACs targets; and per ablation, the full rule's child at the ablation target minus the
    ablated supernet's child of the same spec."""
    children = [run["children"] for run in r["seeds"].values()]
    gaps = ", ".join(f"{t['target'] / 1e6:g}M {t['gap']['mean']:+.2f}" for t in r["summary"]["per_target"])
    nf = r.get("noise_floor")  # results written before the noise-floor trainings have none
    floor = {} if not nf or len(nf["val_top1"]) < 2 else {
        "noise_floor": nf["max"] - nf["min"], "threshold_source": f"one child trained alone with {len(nf['val_top1'])} seeds"}
    data = r["settings"].get("data", "digits")
    seed_text = seeds("training", list(r["seeds"]))
    rows = [Row(f"{EXTRACTORS['bignas'].claim} ({data})", seed_text, note=f"by target: {gaps}", **floor,
                **paired([fmean([c["supernet_val_top1"] for c in cs]) for cs in children],
                         [fmean([c["standalone_val_top1"] for c in cs]) for cs in children]))]
    target = f"{r['settings']['ablation_target'] / 1e6:g}M"
    ablated = {"no_sandwich": "the sandwich rule (section 3.1)", "no_inplace_distillation":
               "inplace distillation (section 3.1)", "no_zero_init": "zero-initialised residual BNs (section 3.1)"}
    runs = list(r["seeds"].values())
    for variant, what in ablated.items():
        if variant in r["settings"]["variants"]:
            rows.append(Row(f"the children improve with {what} ({data}, child at {target})", seed_text, **floor,
                            **paired([s["ablations"]["full"]["target_child_val_top1"] for s in runs],
                                     [s["ablations"][variant]["target_child_val_top1"] for s in runs])))
    return rows


@extractor("autohas", "AutoHAS (arXiv 2006.03656)",
           "a similar or better model than random search or TPE at about a tenth of their compute",
           ("data", "seeds", "trials", "search_epochs", "autohas_epochs", "final_epochs", "no_grid"))
def autohas(r: dict[str, Any]) -> list[Row]:
    """Effect: per seed, AutoHAS's retrained val top-1 minus the better of random search's and TPE's."""
    finals, cost = [run["final"] for run in r["seeds"].values()], r["summary"]
    ratio = cost["autohas"]["trainings_equivalent"]["mean"] / min(
        cost[m]["trainings_equivalent"]["mean"] for m in ("random", "tpe"))
    return [Row(f"{EXTRACTORS['autohas'].claim} ({r['settings']['data']})", seeds("training", list(r["seeds"])),
                note=f"AutoHAS's compute {ratio:.2f}x the cheaper baseline's",
                **paired([f["autohas"]["val_top1"] for f in finals],
                         [max(f["random"]["val_top1"], f["tpe"]["val_top1"]) for f in finals]))]


def median_best_of(values: Sequence[float], k: int) -> float:
    """The median of the best of ``k`` values drawn without replacement from ``values`` (exact: the
    best is at most the i-th smallest with probability C(i, k) / C(n, k))."""
    ordered = sorted(values)
    return next(v for i, v in enumerate(ordered, 1) if comb(i, k) / comb(len(ordered), k) >= 0.5)


def tunas_settings(r: dict[str, Any]) -> dict[str, Any]:
    """tunas_search.py records no settings section: its options rebuilt from what it records."""
    variants: dict[str, tuple[list[str], list[int]]] = {}
    for v in r["variants"]:
        variants.setdefault(v["name"], (v["overrides"], []))[1].append(v["seed"])
    return {"seeds": [f["seed"] for f in r["found"]], "search_overrides": r["search_overrides"], "quick": r["quick"],
            "variants": [f"{name}:{','.join(map(str, ss))}={','.join(o)}" for name, (o, ss) in variants.items()]}


@extractor("tunas_search", "TuNAS (arXiv 2008.06120)",
           "a weight-sharing search beats random search at equal compute (the found network's reward at T0)",
           ("seeds", "search_overrides", "variants"), folder="experiment_tunas", settings=tunas_settings)
def tunas_search(r: dict[str, Any]) -> list[Row]:
    """Effects: per search seed, the found network's standalone reward minus random search's median
    pick at equal CPU (x100), per variant likewise; and the ranking: Kendall tau of seed 0's supernet
    against standalone training, judged against tau minus its bootstrap 10th percentile."""
    pick = median_best_of([m["reward"] for m in r["members"]], r["random_search_equal_cpu"]["k"])
    found, claim = r["found"], EXTRACTORS["tunas_search"].claim
    first = found[0]["standalone_val_top1"]
    common: dict[str, Any] = {"unit": "reward points", "note": f"random search's median pick {pick:.3f}"}
    if first["n"] > 1:  # the first search seed's network over training seeds: the noise floor
        common.update(noise_floor=first["max"] - first["min"], threshold_source=f"search seed {found[0]['seed']}'s "
                      f"found network over {first['n']} training seeds")
    rows = [Row(seeds=f"{seeds('search', [f['seed'] for f in found])}; {first['n']} training seeds for the first, "
                      "1 for the others", effects=tuple(100 * (f["standalone_reward"] - pick) for f in found), **common)]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for v in r["variants"]:
        by_name.setdefault(v["name"], []).append(v)
    rows += [Row(f"{claim}, variant {name} ({', '.join(vs[0]['overrides'])})",
                 f"{seeds('search', [v['seed'] for v in vs])}; 1 training seed each",
                 tuple(100 * (v["standalone_reward"] - pick) for v in vs), **common) for name, vs in by_name.items()]
    k = r["kendall"]
    return rows + [Row(f"the supernet ranks {k['n']} networks as standalone training does (Kendall tau)",
                       f"search seed {found[0]['seed']}'s supernet; 1 training seed per network", (k["tau"],),
                       "tau", baseline_spread=k["tau"] - k["p10"],
                       threshold_source="tau minus its bootstrap 10th percentile")]


@extractor("supernet_strategies", "Search strategies on a supernet (arXiv 1802.01548; 1902.09635, figure 7)",
           "evolution, TPE or REINFORCE find better networks than random search",
           ("trials", "seeds", "strategies", "target", "holdout_images", "calibration_batches"),
           settings=lambda r: {**r, "target": r["target_mmacs"], "strategies": list(r["runs"])})
def supernet_strategies(r: dict[str, Any]) -> list[Row]:
    """Effect: a strategy's median best reward minus random search's (x100), against random's best seed
    minus its median: "reproduced" is the median above every random seed's best."""
    rand = r["best"]["random"]
    return [Row(f"{name} finds better networks than random search",
                f"{seeds('search', r['seeds'])} per strategy, {r['trials']} samples each",
                (100 * (b["median"] - rand["median"]),), "reward points",
                baseline_spread=100 * (rand["max"] - rand["median"]),
                threshold_source="random's best seed minus its median") for name, b in r["best"].items()
            if name != "random"]


def collect(runs: Path) -> list[Row]:
    """Every experiment's rows, read from ``runs/FOLDER/results.json``."""
    rows = []
    for name, ex in EXTRACTORS.items():
        path, script = runs / ex.folder / "results.json", f"python experiments/{name}.py"
        found, quick = [Row(lacking=f"no results: run `{script}`")], False
        if path.is_file():
            try:
                results = json.loads(path.read_text())
                settings = ex.settings(results)
                quick = bool(settings.get("quick", results.get("quick", False)))
                script, found = command(name, settings, ex.options, quick), ex.rows(results)
            except (KeyError, IndexError, TypeError, ValueError) as e:  # an older or partial results file
                found, quick = [Row(lacking=f"no verdict: {ex.folder}/results.json lacks what its extractor reads "
                                            f"({type(e).__name__}: {e})")], False
        rows += [replace(row, experiment=ex.title, claim=row.claim or ex.claim, command=script,
                         quick=quick) for row in found]
    return rows


COLUMNS = ("experiment", "the paper's claim", "seeds", "effect per seed (mean; min to max)", "noise floor", "verdict")


def cells(row: Row) -> tuple[str, ...]:
    """A row as text: experiment, claim, seeds, effect (per seed, mean; min to max), noise floor, verdict."""
    e, effect, noise = row.effects, row.note, ""
    if e:
        summary = f" (mean {fmean(e):+.2f}; {min(e):+.2f} to {max(e):+.2f})" if len(e) > 1 else ""
        effect = ", ".join(f"{x:+.2f}" for x in e) + f" {row.unit}{summary}" + (f"; {row.note}" if row.note else "")
        noise = (f"{row.noise_floor:.2f} ({row.threshold_source})" if row.noise_floor is not None
                 else f"none (threshold {row.baseline_spread:.2f}: {row.threshold_source})")
    return row.experiment, row.claim, row.seeds, effect, noise, row.verdict


def markdown(rows: list[Row]) -> str:
    """The table as markdown, to paste into the README (the command after the claim)."""
    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"
    header = [*COLUMNS[:2], "command", *COLUMNS[2:]]
    body = [line([r.experiment, r.claim, f"`{r.command}`", *cells(r)[2:]]) for r in rows]
    return "\n".join([line(header), line(["---"] * len(header)), *body])


def plain(rows: list[Row], widths: Sequence[int] = (22, 34, 24, 40, 28)) -> str:
    """The table as plain text: cells wrapped to their column's width (the verdict last, unwrapped), the
    command on the line under each row."""
    def block(values: Sequence[str]) -> list[str]:
        cols = [textwrap.wrap(v, w, break_on_hyphens=False) or [""] for v, w in zip(values, widths)]
        cols.append([values[-1]])
        return ["  ".join(f"{(c[i] if i < len(c) else ''):<{w}}" for c, w in zip(cols, [*widths, 0])).rstrip()
                for i in range(max(map(len, cols)))]
    rows_text = [x for r in rows for x in [*block(cells(r)), f"  $ {r.command}", ""]]
    return "\n".join([*block(COLUMNS), "  ".join("-" * w for w in [*widths, 14]), *rows_text])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs", help="the folder of the experiments' outputs")
    p.add_argument("--markdown", action="store_true", help="print the markdown table for the README")
    args = p.parse_args(argv)
    rows = collect(args.runs)
    print(markdown(rows) if args.markdown else plain(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
