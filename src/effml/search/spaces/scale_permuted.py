"""SpineNet's search space (Du et al., arXiv 1912.05027, section 3.1) over the SpineNet block table.

A member is a block table (``SpineNetBlock`` rows: level, block kind, two input blocks, output or
not) inside RetinaNet, the detector SpineNet was searched with. The decisions are the paper's three
parts, in the form Google released them (google/vertex-ai-nas ``tunable_spinenet_search_space.py``
and the ``spinenet_search_space`` it is called with there):

- scale permutations: the order of the intermediate blocks (base levels {L2: 1, L3: 3, L4: 5,
  L5: 2}) and, separately, of the five output blocks (P3-P7);
- cross-scale connections: each block merges two distinct earlier blocks, an intermediate block one
  of the four blocks just before it (the stem's two count), an output block any earlier block;
- block adjustments: an intermediate block moves its level by {-1, 0, +1, +2} (so L1-L7), and
  every block is a residual or a bottleneck block.

An order is asked as a Lehmer code (position i picks one of the blocks not yet placed), so every
strategy sees one fixed set of categorical decisions. The scale-decreased ResNet-FPN network
(``SCALE_DECREASED_BLOCK_SPECS``) is a member: levels in increasing order, outputs P6, P7, P5,
P4, P3.

Equal FLOPs: the paper compares networks of similar FLOPs; here every member is widened or narrowed
(``filter_size_scale``, the scaling SpineNet's own models use) to the multiply-accumulates of the
space's base (the nearest whole-channel step: within a few %), so a search ranks wirings alone and its winner is compared with
any other table at the same cost (``scaled_to_macs``).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from effml.detection.anchors import AnchorSpec
from effml.detection.retinanet import RETINANET_ASPECT_RATIOS, RetinaNetSpec
from effml.errors import SearchError, SpecError
from effml.models.spinenet import SpineNetBlock, SpineNetSpec, blocks_from_table
from effml.models.spinenet_specs import FILTER_SIZE_MAP, SCALE_DECREASED_BLOCK_SPECS
from effml.search.spaces.search_space import Sample
from effml.spec import scale_to_macs

# The released SpineNet space (google/vertex-ai-nas tunable_spinenet.py, spinenet_search_space).
INTERMEDIATE_LEVELS = (2, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5)
LEVEL_OFFSETS = (-1, 0, 1, 2)
BLOCK_FNS = ("residual", "bottleneck")
SEARCH_WINDOW = 4  # an intermediate block's inputs are among the 4 blocks before it
MIN_LEVEL, MAX_LEVEL = 3, 7
STEM_BLOCKS = 2

# A RetinaNet small enough to train in CPU minutes at 128 px: SpineNet block filters x 0.25, 48-wide
# endpoints and a head of two 48-wide convs (SpineNet-49S, the smallest in the paper, has x 0.65,
# 128 and four; arXiv 1912.05027 Table 1 / tensorflow/models spinenet.py SCALING_MAP).
SMALL_FILTER_SCALE = 0.25
SMALL_ENDPOINTS = 48
SMALL_HEAD_CONVS = 2


def small_retinanet(blocks: Any, num_classes: int, resolution: int, in_channels: int = 3,
                    filter_size_scale: float = SMALL_FILTER_SCALE) -> RetinaNetSpec:
    """RetinaNet on the block table ``blocks`` at the small scale above (no stochastic depth)."""
    backbone = SpineNetSpec(blocks=tuple(blocks), filter_size_map=tuple(FILTER_SIZE_MAP.items()),
                            endpoints_num_filters=SMALL_ENDPOINTS, filter_size_scale=filter_size_scale,
                            in_channels=in_channels)
    return RetinaNetSpec(backbone=backbone, head_convs=SMALL_HEAD_CONVS, head_filters=SMALL_ENDPOINTS,
                         anchors=AnchorSpec(aspect_ratios=RETINANET_ASPECT_RATIOS, anchor_scale=3.0),
                         num_classes=num_classes, resolution=resolution)


def detector_macs(spec: RetinaNetSpec) -> int:
    """Multiply-accumulates of the whole detector at its resolution."""
    from effml.search.study.cost import spec_cost

    return spec_cost(spec)["macs"]


def scaled_to_macs(spec: RetinaNetSpec, macs: float, tolerance: float = 0.01) -> RetinaNetSpec:
    """``spec`` with its backbone's ``filter_size_scale`` set so that the detector's MACs come
    closest to ``macs`` (the head and endpoints keep their width): ``effml.spec.scale_to_macs`` on
    the scale, stopping early within ``tolerance``. Widths are whole channels
    (``int(filters x scale)``), so the MACs grow in steps with the scale, up to ~6% apart for these
    small networks."""
    too_small = SearchError(f"no filter_size_scale in [0.01, 16] gives {macs / 1e6:.1f}M MACs for this block table "
                            f"(its head alone may cost more); raise the MACs target")

    def at(scale: float) -> RetinaNetSpec:
        return spec.replace(backbone=spec.backbone.replace(filter_size_scale=round(scale, 5)))

    def count(s: RetinaNetSpec) -> int:
        try:
            return detector_macs(s)
        except (IndexError, RuntimeError):  # some conv would have no channels left at this scale
            raise too_small from None

    try:
        return scale_to_macs(at, count, macs, start=spec.backbone.filter_size_scale, bounds=(0.01, 16),
                             tolerance=tolerance).member
    except SpecError:
        raise too_small from None


def _lehmer(items: tuple[Any, ...], code: list[int]) -> list[Any]:
    """The order that picks ``code[i]``-th of the items not yet placed at position i."""
    left, out = list(items), []
    for k in code:
        out.append(left.pop(k))
    return out


def _pair(text: Any) -> tuple[int, int]:
    a, b = (int(x) for x in str(text).split(","))
    return a, b


@dataclass(frozen=True)
class ScalePermutedSpace:
    """SpineNet's space; ``base`` is its scale-decreased member, whose MACs every member is scaled to
    (``macs``, when given, instead)."""

    layered: ClassVar[bool] = False
    name: str
    base: RetinaNetSpec
    macs: float | None = None
    tolerance: float = 0.01
    intermediate_levels: tuple[int, ...] = INTERMEDIATE_LEVELS
    level_offsets: tuple[int, ...] = LEVEL_OFFSETS
    block_fns: tuple[str, ...] = BLOCK_FNS
    window: int = SEARCH_WINDOW
    hyper: tuple[Any, ...] = ()  # no training hyper-parameters in this space
    _budget: list[int] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.base.backbone.blocks) != len(self.intermediate_levels) + self.num_outputs:
            raise SearchError(f"space {self.name!r}: the base has {len(self.base.backbone.blocks)} blocks; "
                              f"the space's members have {len(self.intermediate_levels)} intermediate and "
                              f"{self.num_outputs} output blocks")

    @property
    def num_outputs(self) -> int:
        """Output blocks: one per level P3-P7."""
        return MAX_LEVEL - MIN_LEVEL + 1

    @property
    def budget(self) -> int:
        """The MACs every member is scaled to: ``macs``, or the base's."""
        if not self._budget:
            self._budget.append(int(self.macs) if self.macs else detector_macs(self.base))
        return self._budget[0]

    # -- the decisions ----------------------------------------------------------------------------

    def options(self) -> dict[str, list[Any]]:
        """Every decision's name and options, in the order they are asked."""
        n, out = len(self.intermediate_levels), {}
        for i in range(n):
            out[f"order.intermediate.{i}"] = list(range(n - i))
        for i in range(self.num_outputs):
            out[f"order.output.{i}"] = list(range(self.num_outputs - i))
        for i in range(n + self.num_outputs):
            bid = STEM_BLOCKS + i
            first = max(0, bid - self.window) if i < n else 0
            out[f"b{i}.inputs"] = [f"{a},{b}" for a, b in itertools.combinations(range(first, bid), 2)]
            out[f"b{i}.block_fn"] = list(self.block_fns)
            if i < n:
                out[f"b{i}.level_offset"] = list(self.level_offsets)
        return out

    def sample(self, trial: Any) -> Sample:
        """Ask ``trial`` (an ``optuna.Trial``) for every decision; the member it picked."""
        return self.member({name: trial.suggest_categorical(name, opts) for name, opts in self.options().items()})

    def random_member(self, rng: random.Random) -> Sample:
        """A member drawn uniformly over the decisions."""
        return self.member({name: rng.choice(opts) for name, opts in self.options().items()})

    def table(self, params: Mapping[str, Any]) -> tuple[SpineNetBlock, ...]:
        """The block table the decisions ``params`` pick."""
        opts = self.options()
        missing = [k for k in opts if k not in params]
        if missing:
            raise SearchError(f"space {self.name!r}: decisions {missing[:3]} are missing")
        for k, v in params.items():
            if k in opts and v not in opts[k]:
                raise SearchError(f"space {self.name!r}: {v!r} is not an option of {k} (options: {opts[k]})")
        n = len(self.intermediate_levels)
        levels = _lehmer(tuple(sorted(self.intermediate_levels)), [params[f"order.intermediate.{i}"] for i in range(n)])
        outputs = _lehmer(tuple(range(MIN_LEVEL, MAX_LEVEL + 1)),
                          [params[f"order.output.{i}"] for i in range(self.num_outputs)])
        rows = []
        for i, level in enumerate(levels):
            rows.append(SpineNetBlock(level + params[f"b{i}.level_offset"], params[f"b{i}.block_fn"], _pair(params[f"b{i}.inputs"]), False))
        for j, level in enumerate(outputs):
            i = n + j
            rows.append(SpineNetBlock(level, params[f"b{i}.block_fn"], _pair(params[f"b{i}.inputs"]), True))
        return tuple(rows)

    def params_of(self, blocks: Any) -> dict[str, Any]:
        """The decisions that give the block table ``blocks`` (a ``SearchError`` if it is not a member)."""
        blocks = blocks_from_table(tuple((b.level, b.block_fn, b.input_offsets, b.is_output)
                                         if isinstance(b, SpineNetBlock) else b for b in blocks))
        n = len(self.intermediate_levels)
        inter, outs = blocks[:n], blocks[n:]
        if len(outs) != self.num_outputs or any(b.is_output for b in inter) or not all(b.is_output for b in outs):
            raise SearchError(f"space {self.name!r}: a member has {n} intermediate blocks, then {self.num_outputs} outputs")
        params: dict[str, Any] = {}
        assignment = self._base_levels([b.level for b in inter], sorted(self.intermediate_levels))
        if assignment is None:
            raise SearchError(f"space {self.name!r}: the intermediate levels {[b.level for b in inter]} are not "
                              f"the base levels {sorted(self.intermediate_levels)} moved by {list(self.level_offsets)}")
        left = sorted(self.intermediate_levels)
        for i, (b, base) in enumerate(zip(inter, assignment)):
            params[f"order.intermediate.{i}"], params[f"b{i}.level_offset"] = left.index(base), b.level - base
            left.remove(base)
        remaining = list(range(MIN_LEVEL, MAX_LEVEL + 1))
        for j, b in enumerate(outs):
            if b.level not in remaining:
                raise SearchError(f"space {self.name!r}: output level {b.level} repeats or is outside P3-P7")
            params[f"order.output.{j}"] = remaining.index(b.level)
            remaining.remove(b.level)
        for i, b in enumerate(blocks):
            params[f"b{i}.inputs"] = ",".join(str(o) for o in sorted(b.input_offsets))
            params[f"b{i}.block_fn"] = b.block_fn
        self.table(params)  # every option exists (a pair outside the window is refused here)
        return params

    def _base_levels(self, levels: list[int], left: list[int]) -> list[int] | None:
        """A base level for each of ``levels`` from the multiset ``left``, each within an offset
        (backtracking: the first assignment found, zero offsets tried first)."""
        if not levels:
            return []
        for off in sorted(self.level_offsets, key=abs):
            base = levels[0] - off
            if base in left:
                rest = list(left)
                rest.remove(base)
                tail = self._base_levels(levels[1:], rest)
                if tail is not None:
                    return [base, *tail]
        return None

    def member(self, params: Mapping[str, Any]) -> Sample:
        """The member ``params`` pick: RetinaNet on its block table, scaled to the space's MACs."""
        try:
            blocks = self.table(params)
            spec = self.base.replace(backbone=self.base.backbone.replace(blocks=blocks))
        except SpecError as err:
            raise SearchError(f"space {self.name!r}: the decisions give an invalid network: {err}") from None
        return Sample(dict(params), scaled_to_macs(spec, self.budget, self.tolerance))

    # -- size and persistence ---------------------------------------------------------------------

    def decisions(self) -> int:
        """How many decision vectors there are."""
        return math.prod(len(o) for o in self.options().values())

    def to_dict(self) -> dict[str, Any]:
        """What a study records of its space (a resumed search must search the same one)."""
        from effml.zoo.kinds import spec_to_dict

        return {"name": self.name, "kind": "scale_permuted", "base": spec_to_dict(self.base),
                "macs": self.budget, "tolerance": self.tolerance,
                "intermediate_levels": list(self.intermediate_levels),
                "level_offsets": list(self.level_offsets), "block_fns": list(self.block_fns),
                "window": self.window}

    def describe(self) -> str:
        """A readable summary of the space."""
        n = len(self.intermediate_levels)
        return "\n".join([
            f"space {self.name}: SpineNet's scale-permuted space, {len(self.options())} decisions "
            f"({self.decisions():.3g} decision vectors), every member scaled to {self.budget / 1e6:.1f}M MACs",
            f"  order of {n} intermediate blocks, base levels {list(self.intermediate_levels)}",
            f"  order of {self.num_outputs} output blocks, P{MIN_LEVEL}-P{MAX_LEVEL}",
            f"  per intermediate block: level offset {list(self.level_offsets)}, two inputs among the "
            f"{self.window} blocks before it",
            "  per output block: two inputs among all earlier blocks",
            f"  per block: {' or '.join(self.block_fns)}"])


def spinenet_space(num_classes: int = 90, resolution: int = 128, in_channels: int = 3) -> ScalePermutedSpace:
    """The scale-permuted space of small RetinaNets (``small_retinanet``) whose base is the
    scale-decreased ResNet-FPN table; every member costs the base's MACs."""
    base = small_retinanet(blocks_from_table(SCALE_DECREASED_BLOCK_SPECS), num_classes, resolution, in_channels)
    return ScalePermutedSpace("spinenet", base)
