"""AKD, architecture-aware knowledge distillation, at small scale on Fashion-MNIST (Liu et al.,
"Search to Distill: Pearls are Everywhere but not the Eyes", arXiv 1911.09074).

AKD's idea: a student's architecture decides how well it learns from a given teacher, so the
search's reward should be the accuracy a candidate reaches when it is distilled from that teacher
(the MnasNet reward, with the proxy training distilling). The paper's claims: (1) AKD's winner,
trained with KD, beats the winner of a plain NAS trained with the same KD at the same latency
target; (2) different teachers prefer different students.

1. Two teachers of different families (``TEACHER_ARCHS``: MBConv with squeeze-excite and swish;
   MixConv kernels 3-9 with ReLU), both keeping 8x8 maps at 32 px, are trained with the full
   recipe on ``--teacher-images`` images for ``--teacher-epochs`` epochs.
2. Three searches of the MnasNet space (``configs/search_fashion_mnist.yaml``: REINFORCE, the soft
   reward, latency measured here, target T = the latency of the space's reference MobileNetV2 at
   32 px), each with the same trials, seed and proxy data:
   ``nas`` (the proxy trains with the labels, plain NAS), ``akd_mbconv`` and ``akd_mixconv``
   (the proxy distils from that teacher: ``distill.teacher``, alpha 0.9,
   temperature 4, the training engine's defaults).
3. Every search's winner is trained with KD from each teacher (the full recipe plus
   distillation; ``--seeds`` seeds) and scored on the 10,000 val images: a 3 x 2 table of
   students and teachers.

The defaults (12 trials per search, teachers trained 3 epochs, each student distilled for 2
epochs on 10,000 images with seeds 0-2) were cut to fit the 45 minutes asked of an experiment on 2
cores; the first run (16 trials, teachers 5 epochs, students 3 epochs, seeds 0-1) took about 100
minutes on a shared machine. Rerun with the defaults (AMD EPYC, 2 cores, other work on them for
part of the run), they took 55.4 minutes: teachers 4.4, searches 19, the 18 distillations 27. And
2 epochs leave the students under-trained: one student under one teacher spreads over up to 13
points across seeds (0.3-2.6 at 3 epochs), more than any effect the claims are about (README, AKD).

Writes ``results.json``, ``akd.png``, the search databases (``effml search report
OUT/nas.db``) and the winners as specs (``best_nas.json``, ``best_akd_mbconv.json``, ...;
``effml train|bench|export`` take them by path) to ``--out``; a rerun continues unfinished searches
and reuses finished trainings.

Usage: python experiments/akd.py [--trials 12] [--seeds 0 1 2] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from _common import fmt, minutes, publish, run_record, save_figure, shipped_top1, spread
from _search import (
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

from effml.train.run_dir import weights_file

# Two teachers of different families, built for 28 px photos: the zoo's networks halve 32 px
# five times and reach about the students' accuracy (EfficientNet-B0: 72.0% after 4 epochs on
# 20,000 images), so the teachers keep 8x8 maps (stem and one stage of stride 2), as the base of
# experiments/compound_scaling.py does. mbconv: MBConv with squeeze-excite and swish (EfficientNet's
# blocks); mixconv: MixConv depthwise kernels 3-9 with ReLU and no squeeze-excite (MixNet's).
TEACHER_ARCHS = {
    "mbconv": ([["ds_r1_k3_s1_e1_c8_se0.25"], ["ir_r2_k3_s2_e6_c16_se0.25"], ["ir_r2_k5_s1_e6_c24_se0.25"],
                ["ir_r3_k3_s1_e6_c40_se0.25"]], "swish"),
    "mixconv": ([["ds_r1_k3_s1_e1_c8"], ["ir_r2_k3.5.7_s2_e6_c16"], ["ir_r2_k3.5.7_s1_e6_c24"],
                 ["ir_r3_k3.5.7.9_s1_e6_c40"]], "relu"),
}
TEACHERS = tuple(TEACHER_ARCHS)


def teacher_spec(name: str, out: Path) -> Path:
    """The teacher's spec JSON in ``out`` (written once)."""
    from effml.spec import NetworkSpec, parse_arch
    from effml.zoo import spec_to_json

    arch, act = TEACHER_ARCHS[name]
    path = out / f"teacher_{name}.json"
    if not path.is_file():
        spec = NetworkSpec(stages=parse_arch(arch), stem_channels=16, head_channels=160, num_classes=10,
                           resolution=32, dropout=0.1, act=act)
        path.write_text(spec_to_json(spec))
    return path


def teacher_weights(run_dir: Path) -> Path:
    """The weights a finished teacher run ships (its EMA weights where it kept them)."""
    return weights_file(run_dir, run_record(run_dir))


def distill(teacher: str, args: argparse.Namespace) -> list[str]:
    """The overrides that distil from ``teacher`` (its spec and trained weights)."""
    return [f"distill.teacher={args.out / f'teacher_{teacher}.json'}",
            f"distill.teacher_weights={args.teacher_weights[teacher]}"]


def config_of(name: str, target_ms: float, args: argparse.Namespace) -> Any:
    settings = {"search.strategy": "reinforce", "objective.constraint": "soft", "objective.latency": "measured",
                "objective.target": target_ms, "search.trials": args.trials, "search.seed": args.seed,
                "search.storage": args.out / f"{name}.db", "search.study": name, **dict(args.proxy)}
    teacher = name.removeprefix("akd_")
    if teacher in TEACHERS:
        settings.update({"proxy." + k: v for k, v in (o.split("=", 1) for o in distill(teacher, args))})
    return search_config(settings)


def differing_layers(a: dict[str, Any], b: dict[str, Any]) -> int:
    """How many block rows two specs of one space differ in (stage by stage, row by row; a stage
    of different length counts its longer length)."""
    count = 0
    for sa, sb in zip(a["stages"], b["stages"]):
        count += sum(x != y for x, y in zip(sa, sb)) + abs(len(sa) - len(sb))
    return count


def main(argv: list[str] | None = None) -> int:
    p = experiment_parser(__doc__, "experiment_akd", trials=12, epochs=2, seeds=(0, 1, 2))
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--teacher-images", type=int, default=10000)
    args = p.parse_args(argv)
    args.proxy, final_set, teacher_set = {"search.workers": args.workers}, [], []
    if args.quick:
        args.trials, args.seeds, args.epochs, args.train_images = 2, args.seeds[:1], 1, 320
        args.teacher_epochs, args.teacher_images = 1, 320
        args.proxy.update({"proxy.train.max_steps": 3, "proxy.data.limit_val": 100})
        final_set = teacher_set = ["train.max_steps=3", "data.limit_val=200"]
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)

    # 1. the teachers
    teacher_runs = train_all({t: ([f"model.name={teacher_spec(t, args.out)}", "train.seed=0",
                                   *full_recipe(args.teacher_images, args.teacher_epochs), *teacher_set],
                                  args.out / f"teacher_{t}") for t in TEACHERS}, args.workers)
    args.teacher_weights = {t: teacher_weights(r) for t, r in teacher_runs.items()}

    # 2. the searches, one target T
    ref = reference_target(config_of("nas", 1.0, args), args.out / "target.json")
    target_ms = ref["latency_ms"]
    print(f"target T: {target_ms:.2f} ms (the reference, MobileNetV2 at 32 px)")
    names = ["nas", *(f"akd_{t}" for t in TEACHERS)]
    trials = {name: search_rows(config_of(name, target_ms, args), name) for name in names}
    winners = {name: best_row(rows) for name, rows in trials.items()}
    measured = remeasure({key_of(w["spec"]): w["spec"] for w in winners.values()})
    paths = {name: save_spec(w["spec"], args.out / f"best_{name}.json") for name, w in winners.items()}

    # 3. every winner distilled from every teacher (a winner two searches share is trained once)
    same = first_of_same({name: w["spec"] for name, w in winners.items()})
    recipe = full_recipe(args.train_images, args.epochs) + final_set
    runs = train_all({(name, t, seed): ([f"model.name={paths[name]}", f"train.seed={seed}",
                                         *distill(t, args), *recipe],
                                        args.out / f"final_{name}_kd_{t}_seed{seed}")
                      for name in set(same.values()) for t in TEACHERS for seed in args.seeds}, args.workers)

    from effml.search.study.cost import spec_cost
    from effml.zoo import load_spec

    teachers = {t: {"top1": shipped_top1(r), "minutes": minutes(r), **spec_cost(load_spec(r / "model.json"))}
                for t, r in teacher_runs.items()}
    final = {name: {t: {"top1": (top1 := [shipped_top1(runs[(same[name], t, s)]) for s in args.seeds]),
                        "top1_summary": spread(top1)} for t in TEACHERS} for name in names}
    searches = {}
    for name, rows in trials.items():
        w = winners[name]
        searches[name] = {
            "trials": rows, "best": {k: v for k, v in w.items() if k != "spec"}, "spec": str(paths[name]),
            "latency_quiet_ms": measured[key_of(w["spec"])],
            "reward_first_half": statistics.fmean(r["reward"] for r in rows[:len(rows) // 2]) if len(rows) > 1
            else None,
            "reward_second_half": statistics.fmean(r["reward"] for r in rows[len(rows) // 2:])}
    pairs = {f"{a} vs {b}": differing_layers(winners[a]["spec"], winners[b]["spec"])
             for i, a in enumerate(names) for b in names[i + 1:]}
    claims = compare(final, args.seeds)
    results = {"settings": {"trials": args.trials, "seed": args.seed, "seeds": args.seeds, "epochs": args.epochs,
                            "train_images": args.train_images, "teacher_epochs": args.teacher_epochs,
                            "teacher_images": args.teacher_images, "quick": args.quick},
               "target": {"latency_ms": target_ms, "reference_macs": ref["macs"]}, "teachers": teachers,
               "searches": searches, "same_winner_as": same, "differing_layers": pairs, "final": final, "claims": claims,
               "wall_minutes": (time.perf_counter() - started) / 60}
    publish(args.out, results, "akd.png", plot, print_tables,
            also=f"the winners' specs ({', '.join(p.name for p in paths.values())})")
    return 0


def compare(final: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """Paired by seed: (1) each AKD winner against the NAS winner, both distilled from AKD's
    teacher; (2) the teacher preference: the AKD students' difference under one teacher minus the
    same difference under the other (positive: each teacher's own student does better with it)."""
    a, b = TEACHERS
    out: dict[str, Any] = {}
    for t in TEACHERS:
        diffs = [x - y for x, y in zip(final[f"akd_{t}"][t]["top1"], final["nas"][t]["top1"])]
        out[f"akd_{t} - nas, both taught by {t}"] = spread(diffs)
    inter = [(final[f"akd_{a}"][a]["top1"][i] - final[f"akd_{b}"][a]["top1"][i])
             - (final[f"akd_{a}"][b]["top1"][i] - final[f"akd_{b}"][b]["top1"][i]) for i in range(len(seeds))]
    out["teacher preference (interaction)"] = spread(inter)
    return out


def print_tables(results: dict[str, Any]) -> None:
    s = results["settings"]
    print(f"\nteachers ({s['teacher_images']} images, {s['teacher_epochs']} epochs at 32 px); val top-1 %")
    for t, r in results["teachers"].items():
        print(f"  {t:<16} {r['top1']:6.2f}  {r['macs'] / 1e6:6.2f} MMACs  {r['params']:,d} params  "
              f"{r['minutes']:.1f} min")
    print(f"\nsearches ({s['trials']} trials each, seed {s['seed']}); T = {results['target']['latency_ms']:.2f} ms")
    print(f"{'search':<22} {'best reward':>11} {'proxy acc %':>11} {'ms':>6} {'MMACs':>6} {'reward 1st half':>15} "
          f"{'2nd half':>8}")
    for name, r in results["searches"].items():
        b = r["best"]
        first = f"{r['reward_first_half']:.4f}" if r["reward_first_half"] is not None else "-"
        print(f"{name:<22} {b['reward']:11.4f} {100 * b['accuracy']:11.1f} {r['latency_quiet_ms']:6.2f} "
              f"{b['macs'] / 1e6:6.2f} {first:>15} {r['reward_second_half']:8.4f}")
    print("block rows in which the winners differ: " + ", ".join(f"{k} {v}" for k, v in results["differing_layers"].items()))
    n = len(s["seeds"])
    teachers = list(next(iter(results["final"].values())))
    print(f"\neach winner distilled from each teacher ({s['train_images']} images, {s['epochs']} epochs); "
          f"val top-1 %, mean (min-max) over {n} seed(s)")
    print(f"{'student':<22} " + " ".join(f"{'KD from ' + t:>24}" for t in teachers))
    for name, row in results["final"].items():
        print(f"{name:<22} " + " ".join(f"{fmt(row[t]['top1_summary']):>24}" for t in teachers))
    print("\npaired by seed, percentage points:")
    for k, v in results["claims"].items():
        print(f"  {k}: {fmt(v)}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for i, (name, r) in enumerate(results["searches"].items()):
        rows = r["trials"]
        left.plot([x["number"] for x in rows], [x["reward"] for x in rows], "o-", ms=3, lw=0.8, color=f"C{i}",
                  label=name)
    left.set_xlabel("trial")
    left.set_ylabel("reward (proxy accuracy x latency term)")
    left.set_title("the searches: plain NAS and AKD with each teacher", fontsize=9)
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    names = list(results["final"])
    teachers = list(results["final"][names[0]])
    width = 0.8 / len(teachers)
    for j, t in enumerate(teachers):
        means = [results["final"][n][t]["top1_summary"]["mean"] for n in names]
        lows = [m - results["final"][n][t]["top1_summary"]["min"] for m, n in zip(means, names)]
        highs = [results["final"][n][t]["top1_summary"]["max"] - m for m, n in zip(means, names)]
        xs = [i + (j - (len(teachers) - 1) / 2) * width for i in range(len(names))]
        right.bar(xs, means, width, yerr=[lows, highs], capsize=3, color=f"C{j + 4}", label=f"KD from {t}")
    right.set_xticks(range(len(names)), [f"{n} winner" for n in names], fontsize=7)
    lo = min(results["final"][n][t]["top1_summary"]["min"] for n in names for t in teachers)
    hi = max(results["final"][n][t]["top1_summary"]["max"] for n in names for t in teachers)
    right.set_ylim(lo - 2, hi + 1)
    right.set_ylabel("val top-1 % (min-max over seeds)")
    right.set_title("each winner distilled from each teacher", fontsize=9)
    right.legend(fontsize=7)
    right.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
