"""BigNAS's coarse-to-fine architecture selection (arXiv 2003.11142, section 3.2).

Coarse: a grid of *skeletons* (every input resolution x uniform depth, width, kernel and expansion
levels applied to all stages at once) is costed (MACs, or latency from a latency table); those
within the target closest to it are scored. Fine: random mutations of the best (each decision redrawn with a probability) that stay
within the target are scored, keeping the best. A score is the held-out top-1 of the child with
the shared weights after BN calibration; no accuracy predictor and no retraining.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from effml.errors import SearchError
from effml.search.spaces.search_space import SearchSpace, _magnitude, _suggestible
from effml.spec import NetworkSpec
from effml.spec.plan import plan

# The uniform levels of a skeleton, per group of decisions (BigNAS: uniform depth, width, kernel).
SKELETON_LEVELS = (0.0, 0.5, 1.0)
_GROUP = {"repeats": "depth", "out_channels": "width", "filters": "width", "stem_channels": "width",
          "head_channels": "width", "width": "width", "kernel_size": "kernel", "expand_ratio": "expand",
          "se_ratio": "se"}


@dataclass(frozen=True)
class Candidate:
    """A scored child: its decisions, spec, MACs, cost (what the target bounds) and held-out top-1."""

    params: dict[str, Any]
    spec: NetworkSpec
    macs: int
    cost: float
    score: float
    stage: str  # 'coarse' or 'fine'


@dataclass
class Selection:
    """The outcome at one target: the best child and every candidate scored on the way; ``unit`` is
    what the target and the costs count ('MACs' or 'ms')."""

    target: float
    best: Candidate
    scored: list[Candidate] = field(default_factory=list)
    unit: str = "MACs"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (the spec as its dict)."""
        from effml.zoo.kinds import spec_to_dict

        def one(c: Candidate) -> dict[str, Any]:
            return {"params": c.params, "macs": c.macs, "cost": c.cost, "score": c.score, "stage": c.stage}

        return {"target": self.target, "unit": self.unit, "best": {**one(self.best), "spec": spec_to_dict(self.best.spec)},
                "scored": [one(c) for c in self.scored]}


def parse_macs(text: str) -> float:
    """'50M' -> 5e7 (also K, G and plain numbers): a MACs target as written on the command line."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMgG]?)\s*", str(text))
    if not m:
        raise SearchError(f"MACs target {text!r}: write a number with an optional K, M or G (e.g. 2.5M)")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
    if value <= 0:
        raise SearchError(f"MACs target {text!r} must be positive")
    return value


def skeletons(space: SearchSpace) -> list[dict[str, Any]]:
    """The coarse grid: each resolution option x a uniform level per group (depth, width, kernel,
    expansion), a level l picking option round(l * (n - 1)) of every decision sorted by size."""
    groups: dict[str, list] = {}
    fixed = []
    for c in space.choices:
        if c.field == "resolution":
            fixed.append(c)
        else:
            groups.setdefault(_GROUP.get(c.field, c.field), []).append(c)
    resolutions = next((c.options for c in fixed), (None,))
    out, seen = [], set()
    for res, levels in itertools.product(resolutions, itertools.product(SKELETON_LEVELS, repeat=len(groups))):
        params: dict[str, Any] = {}
        for level, choices in zip(levels, groups.values()):
            for c in choices:
                ordered = sorted(c.options, key=_magnitude)
                params[c.name] = _suggestible(ordered[round(level * (len(ordered) - 1))])
        if res is not None:
            params["resolution"] = res
        key = tuple(sorted(params.items()))
        if key not in seen:
            seen.add(key)
            out.append(params)
    return out


def macs_of(spec: NetworkSpec) -> float:
    """Multiply-accumulates of ``spec`` for a batch of one (what papers call FLOPs)."""
    return float(plan(spec).macs())


def describe_cost(value: float, unit: str) -> str:
    """'2.5M MACs' or '4.20 ms'."""
    return f"{value / 1e6:.3g}M MACs" if unit == "MACs" else f"{value:.2f} {unit}"


def coarse_to_fine(space: SearchSpace, score: Callable[[NetworkSpec], float], target: float, *,
                   cost: Callable[[NetworkSpec], float] = macs_of, unit: str = "MACs", coarse_top: int = 4,
                   mutations: int = 12, mutation_prob: float = 0.3, seed: int = 0,
                   echo: Callable[[str], None] | None = None) -> Selection:
    """The best child of ``space`` by ``score`` (higher is better) whose ``cost`` (default: MACs; e.g. a
    latency table's prediction in ms) is within ``target``."""
    costed = [(cost(space.member(p).spec), p) for p in skeletons(space)]
    fits = sorted([(c, p) for c, p in costed if c <= target], key=lambda cp: -cp[0])
    if not fits:
        smallest = cost(space.smallest().spec)
        raise SearchError(f"no child of space {space.name!r} fits {describe_cost(target, unit)}: the smallest has "
                          f"{describe_cost(smallest, unit)}; raise the target")
    scored: list[Candidate] = []
    seen: set[tuple] = set()

    def visit(params: dict[str, Any], spent: float, stage: str) -> Candidate:
        spec = space.member(params).spec
        cand = Candidate(dict(params), spec, plan(spec).macs(), spent, float(score(spec)), stage)
        seen.add(tuple(sorted(params.items())))
        scored.append(cand)
        if echo is not None:
            extra = "" if unit == "MACs" else f" {spent:7.2f} {unit}"
            echo(f"  {stage:<6} {cand.macs / 1e6:7.3f}M MACs{extra}  res {spec.resolution:<4} "
                 f"held-out top-1 {cand.score:6.2f}")
        return cand

    for spent, params in fits[:coarse_top]:
        visit(params, spent, "coarse")
    best = max(scored, key=lambda c: c.score)
    rng = random.Random(seed)
    for _ in range(mutations):
        for _attempt in range(50):
            params = {c.name: _suggestible(rng.choice(c.options)) if rng.random() < mutation_prob
                      else best.params[c.name] for c in space.choices}
            spent = cost(space.member(params).spec)
            if spent <= target and tuple(sorted(params.items())) not in seen:
                break
        else:
            continue
        cand = visit(params, spent, "fine")
        if cand.score > best.score:
            best = cand
    return Selection(target, best, scored, unit)


def merge_selections(earlier: Any, new: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """``selection.json``'s records after a selection: the ``earlier`` ones (its parsed content)
    at other targets kept, those at the new targets replaced, sorted by unit and target; and how
    many were replaced."""
    records = [r for r in earlier if isinstance(r, dict)] if isinstance(earlier, list) else []
    targets = {(r["unit"], r["target"]) for r in new}
    kept = [r for r in records if (r.get("unit"), r.get("target")) not in targets]
    return sorted(kept + new, key=lambda r: (str(r.get("unit")), float(r.get("target", 0)))), len(records) - len(kept)


def plot_selection(selections: list[dict[str, Any]], path: str | Path) -> Path:
    """Held-out top-1 against cost (MMACs or latency): every scored candidate (grey), each target's best
    (marked) and the targets (dotted lines), from ``Selection.to_dict`` records of one unit; written
    atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from effml.files import atomic_write_bytes

    unit = selections[0]["unit"] if selections else "MACs"
    scale = 1e6 if unit == "MACs" else 1.0
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for s in selections:
        ax.scatter([c["cost"] / scale for c in s["scored"]], [c["score"] for c in s["scored"]], s=12, color="0.7")
        ax.axvline(s["target"] / scale, color="0.5", linestyle=":", linewidth=1)
    ax.plot([s["best"]["cost"] / scale for s in selections], [s["best"]["score"] for s in selections], "o-",
            color="C0", label="selected child")
    ax.set_xlabel("MMACs (batch of one)" if unit == "MACs" else f"predicted latency ({unit})")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title("BigNAS children: shared weights, BN calibrated, no retraining")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path
