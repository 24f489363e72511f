"""EfficientNet's compound scaling at small scale, on Fashion-MNIST (Tan & Le, arXiv 1905.11946,
section 3.3 and Figures 3, 4 and 8).

The paper's claim: scaling width, depth and resolution together by alpha^phi, beta^phi, gamma^phi
(alpha * beta^2 * gamma^2 ~= 2, so each unit of phi doubles the FLOPs) gives better accuracy at equal
FLOPs than scaling any one of them. Its recipe, followed here:

1. Step 1, phi = 1: a small grid search over (alpha, beta, gamma) with alpha * beta^2 * gamma^2 ~= 2
   on the base network; each point trained with the same recipe and scored. The best point is the
   compound rule (the paper found alpha 1.2, beta 1.1, gamma 1.15 for B0).
2. Step 2: the base scaled to about 4x its MACs along that rule, and along width only, depth only
   and resolution only; everything trained with the same recipe and compared at equal MACs (the
   2x points of the single-dimension rules are grid points).

At this size rounding (channels to integers, repeats up, pixels to integers, feature maps up at
every stride) makes MACs a staircase: one more repeat per stage is 1.4x, 16 -> 17 px is 1.5x. So
the grid is over realisable networks, (alpha, beta, pixels), keeping those within 13% of twice the
base's MACs (the constraint measured instead of nominal), and a 4x network is the one along its
rule (phi in steps of 0.01) whose MACs come closest to 4x; real MACs are reported. Channels round
to multiples of 1, not 8 (``compound_scale(divisor=1)``, the TF reference's ``depth_divisor``): at
8-40 channels a multiple of 8 would swallow a 1.1x width step whole.

The base: EfficientNet-B0's first four stages (their kernels, expansions and squeeze-excitation) at
half width (1.25 MMACs), only the second at stride 2 so that a 16 px input ends at 4x4 maps, head
160, at 16 px (Fashion-MNIST's 28 px photos downsampled, so that resolution scaling has real detail
to gain up to 28 px). Recipe: configs/fashion_mnist.yaml
(the EfficientNet recipe rescaled to this data) on the first ``--train-images`` training images for
``--epochs`` epochs, scored on the 10,000 test images (the val set) with the weights the run ships
(EMA). Every network is trained once per seed (``--seeds``); the grid's best point is chosen by the
mean over the seeds.

Writes ``results.json``, ``compound_scaling.png`` and the scaled networks as specs
(``compound_2x.json``, ``width_4x.json``, ...; ``effml train|bench|export`` take them by path) to
``--out``; a rerun reuses finished trainings.

Usage: python experiments/compound_scaling.py [--seeds 0 1] [--epochs 4] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import ROOT, fmt, minutes, publish, save_figure, shipped_top1, spread, train

from effml.spec import NetworkSpec, compound_scale, format_arch, parse_arch, plan, scale_to_macs
from effml.zoo import spec_to_json

RECIPE = ROOT / "configs" / "fashion_mnist.yaml"
BASE = NetworkSpec(
    stages=parse_arch([["ds_r1_k3_s1_e1_c8_se0.25"], ["ir_r2_k3_s2_e6_c12_se0.25"],
                       ["ir_r2_k5_s1_e6_c20_se0.25"], ["ir_r3_k3_s1_e6_c40_se0.25"]]),
    stem_channels=16, head_channels=160, num_classes=10, resolution=16, dropout=0.1)
DIVISOR = 1
# Step 1's grid: depth alpha x width beta x input pixels (gamma = pixels / 16), of which the points
# whose MACs are within 13% of twice the base's form the grid (alpha * beta^2 * gamma^2 ~= 2,
# measured instead of nominal). 16 -> 17 px is a real step: the last maps grow from 4x4 to 5x5.
GRID_ALPHA = (1.0, 1.2, 1.4, 2.0)
GRID_BETA = (1.0, 1.1, 1.2, math.sqrt(2))
GRID_PIXELS = (16, 17, 21)
GRID_TOLERANCE = 0.13  # |log(MACs ratio / 2)|
QUICK_GRID = ((1.0, 2.0), (1.0,), (16, 21))  # --quick: resolution only and depth only
PAPER_RULE = (1.2, 1.1, 1.15)  # arXiv 1905.11946 section 4, found for B0 by the same grid search


@dataclass(frozen=True)
class Rule:
    """A scaling rule: depth, width and resolution multipliers per unit of phi."""

    alpha: float
    beta: float
    gamma: float

    @property
    def name(self) -> str:
        return f"a{self.alpha:g}_b{self.beta:.3g}_g{self.gamma:.3g}"

    def at(self, phi: float) -> NetworkSpec:
        return compound_scale(BASE, width=self.beta ** phi, depth=self.alpha ** phi,
                              resolution=round(BASE.resolution * self.gamma ** phi), divisor=DIVISOR)


SINGLE = {"width": Rule(1.0, math.sqrt(2), 1.0), "depth": Rule(2.0, 1.0, 1.0),
          "resolution": Rule(1.0, 1.0, math.sqrt(2))}


def macs(spec: NetworkSpec) -> int:
    return plan(spec).macs()


def grid_rules(alphas=GRID_ALPHA, betas=GRID_BETA, pixels=GRID_PIXELS) -> list[Rule]:
    """The grid points whose network at phi = 1 costs about twice the base's MACs."""
    rules = [Rule(a, b, px / BASE.resolution) for a in alphas for b in betas for px in pixels]
    return [r for r in rules if abs(math.log(macs(r.at(1)) / macs(BASE) / 2)) <= GRID_TOLERANCE]


def matched(rule: Rule, ratio: float) -> tuple[float, NetworkSpec]:
    """The phi (steps of 0.01 up to 3 log2(ratio)) whose network along ``rule`` comes closest to
    ``ratio`` times the base's MACs, and that network: rounding makes MACs a staircase in phi."""
    found = scale_to_macs(lambda phi: rule.at(round(phi, 2)), macs, ratio * macs(BASE), start=math.log2(ratio),
                          bounds=(0.01, int(300 * math.log2(ratio)) * 0.01), grid=0.01)
    return round(found.value, 2), found.member


def methods_at_2x(grid_rows: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The grid's rows that scale one dimension only, by method, and the best row as 'compound'."""
    found = {"compound": best}
    for r in grid_rows:
        grown = [m for m, k in (("depth", "alpha"), ("width", "beta"), ("resolution", "gamma")) if r[k] > 1]
        if len(grown) == 1:
            found[grown[0]] = r
    return found


def describe(spec: NetworkSpec) -> dict[str, Any]:
    from effml.models.counting import count_params
    from effml.models.network import EfficientNet

    return {"macs": macs(spec), "params": count_params(EfficientNet(spec)),
            "resolution": spec.resolution, "arch": format_arch(spec.stages), "stem": spec.stem_channels,
            "head": spec.head_channels}


def recipe(spec_path: Path, spec: NetworkSpec, seed: int, args: argparse.Namespace) -> list[str]:
    """The one recipe every network trains with (only the spec and its resolution differ)."""
    return [f"model.name={spec_path}", f"data.image_size={spec.resolution}", f"data.limit_train={args.train_images}",
            f"train.epochs={args.epochs}", f"train.eval_every={args.epochs}", f"train.seed={seed}",
            f"schedule.decay_epochs={args.epochs / 40:g}",  # 40 decays per run, as the recipe has
            "train.ema_decay=0.995", *args.set]


def train_all(jobs: list[tuple[str, NetworkSpec]], args: argparse.Namespace) -> dict[tuple[str, int], Path]:
    """Train every (name, spec) once per seed, ``--workers`` at a time; run directories by (name, seed)."""
    out = args.out
    trained_as: dict[str, str] = {}  # a network reached by two rules (spec JSON -> first name) trains once
    for name, spec in jobs:
        (out / f"{name}.json").write_text(spec_to_json(spec))
        trained_as.setdefault(spec_to_json(spec), name)
    todo = [(trained_as[spec_to_json(spec)], spec, seed) for seed in args.seeds for name, spec in jobs]
    todo = list({(n, seed): (n, spec, seed) for n, spec, seed in todo}.values())
    # the largest first, so that the last minutes are not one big network training alone
    todo.sort(key=lambda j: -macs(j[1]) * j[1].resolution)

    def one(job: tuple[str, NetworkSpec, int]) -> Path:
        name, spec, seed = job
        return train(RECIPE, recipe(out / f"{name}.json", spec, seed, args), out / f"run_{name}_seed{seed}")

    with ThreadPoolExecutor(args.workers) as pool:
        dirs = dict(zip([(n, seed) for n, _, seed in todo], pool.map(one, todo)))
    return {(name, seed): dirs[(trained_as[spec_to_json(spec)], seed)] for seed in args.seeds for name, spec in jobs}


def row(name: str, spec: NetworkSpec, dirs: dict[tuple[str, int], Path], seeds: list[int],
        **extra: Any) -> dict[str, Any]:
    top1 = [shipped_top1(dirs[(name, s)]) for s in seeds]
    return {"name": name, **extra, **describe(spec), "macs_ratio": macs(spec) / macs(BASE),
            "top1": top1, "top1_summary": spread(top1), "minutes": [minutes(dirs[(name, s)]) for s in seeds]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--ratios", type=float, nargs="+", default=[4.0],
                   help="MACs targets over the base's beyond the grid's 2x")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "experiment_compound_scaling")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (CI)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.train_images = args.seeds[:1], 1, 1280
        args.set = ["data.limit_val=500", *args.set]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    # step 1: the grid at about 2x, each point trained at phi = 1
    grid = grid_rules(*QUICK_GRID) if args.quick else grid_rules()
    dirs = train_all([("base", BASE)] + [(f"grid_{r.name}", r.at(1)) for r in grid], args)
    grid_rows = [row(f"grid_{r.name}", r.at(1), dirs, args.seeds, alpha=r.alpha, beta=r.beta, gamma=r.gamma, phi=1.0)
                 for r in grid]
    best = max(grid_rows, key=lambda r: r["top1_summary"]["mean"])
    rules = {"compound": Rule(best["alpha"], best["beta"], best["gamma"]), **SINGLE}

    # step 2: at 2x the grid's own points (the best one, width only, depth only, resolution only);
    # beyond, each rule's network closest to the ratio
    scaled_rows = [{**r, "method": m, "ratio": 2.0} for m, r in methods_at_2x(grid_rows, best).items()]
    scaled = {(m, ratio): matched(rule, ratio) for m, rule in rules.items() for ratio in args.ratios}
    names = {key: f"{key[0]}_{key[1]:g}x" for key in scaled}
    dirs.update(train_all([(names[k], spec) for k, (_, spec) in scaled.items()], args))
    scaled_rows += [row(names[(m, ratio)], spec, dirs, args.seeds, method=m, ratio=ratio, phi=phi)
                    for (m, ratio), (phi, spec) in scaled.items()]
    (args.out / "compound_2x.json").write_text((args.out / f"{best['name']}.json").read_text())
    base_row = row("base", BASE, dirs, args.seeds)

    results = {"settings": {"seeds": args.seeds, "epochs": args.epochs, "train_images": args.train_images,
                            "ratios": args.ratios, "divisor": DIVISOR,
                            "grid": {"alpha": GRID_ALPHA, "beta": GRID_BETA, "pixels": GRID_PIXELS,
                                     "tolerance": GRID_TOLERANCE}, "recipe": str(RECIPE), "set": args.set,
                            "quick": args.quick},
               "base": base_row, "grid": grid_rows,
               "chosen": {"alpha": best["alpha"], "beta": best["beta"], "gamma": best["gamma"]},
               "paper_rule": dict(zip(("alpha", "beta", "gamma"), PAPER_RULE)), "scaled": scaled_rows,
               "wall_minutes": (time.perf_counter() - started) / 60}
    publish(args.out, results, "compound_scaling.png", plot, print_tables,
            also=f"the specs (compound_2x.json, {', '.join(names[k] + '.json' for k in scaled)})")
    return 0


def print_tables(results: dict[str, Any]) -> None:
    n = len(results["settings"]["seeds"])
    b = results["base"]
    print(f"\nbase: {b['macs'] / 1e6:.2f} MMACs at {b['resolution']} px, val top-1 {fmt(b['top1_summary'])} % "
          f"(mean (min-max) over {n} seed(s))")
    print("\nstep 1: grid at about 2x MACs (alpha * beta^2 * gamma^2 = 2)")
    print(f"{'alpha':>6} {'beta':>6} {'gamma':>6} {'phi':>5} {'px':>3} {'MACs x':>7} {'val top-1 %':>22}")
    for r in sorted(results["grid"], key=lambda r: -r["top1_summary"]["mean"]):
        print(f"{r['alpha']:6.2f} {r['beta']:6.3f} {r['gamma']:6.3f} {r['phi']:5.2f} {r['resolution']:3d} "
              f"{r['macs_ratio']:7.2f} {fmt(r['top1_summary']):>22}")
    c = results["chosen"]
    print(f"chosen: alpha {c['alpha']:.2f}, beta {c['beta']:.3f}, gamma {c['gamma']:.3f} "
          f"(the paper's for B0: 1.2, 1.1, 1.15)")
    print("\nstep 2: scaling the base along one rule, val top-1 % at (about) equal MACs; 2x: grid points")
    print(f"{'method':<11} {'target':>6} {'phi':>5} {'px':>3} {'MACs x':>7} {'params':>8} {'val top-1 %':>22} {'min':>5}")
    for r in sorted(results["scaled"], key=lambda r: (r["ratio"], -r["top1_summary"]["mean"])):
        print(f"{r['method']:<11} {r['ratio']:5g}x {r['phi']:5.2f} {r['resolution']:3d} {r['macs_ratio']:7.2f} "
              f"{r['params']:8,d} {fmt(r['top1_summary']):>22} {max(r['minutes']):5.1f}")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    grid = sorted(results["grid"], key=lambda r: r["top1_summary"]["mean"])
    y = range(len(grid))
    means = [r["top1_summary"]["mean"] for r in grid]
    err = [[m - r["top1_summary"]["min"] for m, r in zip(means, grid)],
           [r["top1_summary"]["max"] - m for m, r in zip(means, grid)]]
    left.barh(list(y), means, xerr=err, color="C0", alpha=0.7)
    left.set_yticks(list(y), [f"a {r['alpha']:.2f} b {r['beta']:.2f} g {r['gamma']:.2f}" for r in grid], fontsize=7)
    lo = min(r["top1_summary"]["min"] for r in grid)
    left.set_xlim(lo - 1.0, max(r["top1_summary"]["max"] for r in grid) + 0.5)
    left.set_xlabel("val top-1 % (mean, min-max over seeds)")
    left.set_title("step 1: grid at ~2x MACs", fontsize=9)
    base = results["base"]
    for i, method in enumerate(("compound", "width", "depth", "resolution")):
        rows = [base] + sorted((r for r in results["scaled"] if r["method"] == method), key=lambda r: r["macs"])
        x = [r["macs"] / 1e6 for r in rows]
        m = [r["top1_summary"]["mean"] for r in rows]
        # compound drawn open and dashed: it may coincide with a single-dimension rule
        style = ({"ls": "--", "marker": "s", "ms": 9, "mfc": "none", "zorder": 3} if method == "compound"
                 else {"marker": "o"})
        right.plot(x, m, color=f"C{i}", label=f"{method} scaling", **style)
        right.fill_between(x, [r["top1_summary"]["min"] for r in rows], [r["top1_summary"]["max"] for r in rows],
                           color=f"C{i}", alpha=0.15)
    right.set_xlabel("MMACs (batch of one)")
    right.set_ylabel("Fashion-MNIST val top-1 %")
    right.set_title("step 2: scaling the base (cf. arXiv 1905.11946 Fig. 8)", fontsize=9)
    right.grid(alpha=0.3)
    right.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
