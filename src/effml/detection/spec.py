"""Detector specs: a BiFPN is a generated list of fusion nodes, an EfficientDet is a backbone spec
plus a BiFPN spec, a head and anchors. Frozen, printable, written to JSON by the one codec like
NetworkSpec."""

from __future__ import annotations

from dataclasses import dataclass, field

from effml.detection.anchors import AnchorSpec
from effml.errors import SpecError
from effml.spec import ComposedSpec, NetworkSpec

FUSIONS = ("fastattn", "attn", "sum")


@dataclass(frozen=True)
class FpnNode:
    """One fusion node: its pyramid level and the ids of the features it fuses.

    Ids index the running list [inputs P_min..P_max, node 0, node 1, ...] (google/automl ``tf2/fpn_configs.py``).
    """

    level: int
    inputs: tuple[int, ...]


def bifpn_nodes(min_level: int, max_level: int) -> tuple[FpnNode, ...]:
    """The BiFPN topology for levels min..max (google/automl fpn_configs.bifpn_config).

    Top-down: each level from max-1 down fuses its last feature with the last one above.
    Bottom-up: each level from min+1 up fuses every feature of its level with the last one below.
    """
    if max_level - min_level < 1:
        raise SpecError(f"BiFPN needs at least two levels, got min_level={min_level}, max_level={max_level}")
    ids: dict[int, list[int]] = {lvl: [lvl - min_level] for lvl in range(min_level, max_level + 1)}
    nodes: list[FpnNode] = []

    def add(level: int, inputs: list[int]) -> None:
        ids[level].append(max_level - min_level + 1 + len(nodes))
        nodes.append(FpnNode(level, tuple(inputs)))

    for lvl in range(max_level - 1, min_level - 1, -1):
        add(lvl, [ids[lvl][-1], ids[lvl + 1][-1]])
    for lvl in range(min_level + 1, max_level + 1):
        add(lvl, ids[lvl] + [ids[lvl - 1][-1]])
    return tuple(nodes)


@dataclass(frozen=True)
class BiFPNSpec:
    """A BiFPN: ``width`` channels, ``cells`` repeated cells of ``nodes``, one fusion method."""

    width: int
    cells: int
    min_level: int = 3
    max_level: int = 7
    fusion: str = "fastattn"
    nodes: tuple[FpnNode, ...] = ()

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise SpecError(f"BiFPN fusion {self.fusion!r} is unknown; use one of {FUSIONS}")
        if not self.nodes:
            object.__setattr__(self, "nodes", bifpn_nodes(self.min_level, self.max_level))
        n_in = self.num_levels
        for i, node in enumerate(self.nodes):
            if not self.min_level <= node.level <= self.max_level:
                raise SpecError(f"BiFPN node {i}: level {node.level} outside {self.min_level}..{self.max_level}")
            bad = [j for j in node.inputs if not 0 <= j < n_in + i]
            if bad or not node.inputs:
                raise SpecError(f"BiFPN node {i}: inputs {node.inputs} must name earlier features 0..{n_in + i - 1}")
        missing = set(range(self.min_level, self.max_level + 1)) - {n.level for n in self.nodes}
        if missing:
            raise SpecError(f"BiFPN nodes produce no output for levels {sorted(missing)}")

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels in and out."""
        return self.max_level - self.min_level + 1


@dataclass(frozen=True)
class EfficientDetSpec(ComposedSpec):
    """EfficientDet: backbone taps -> extra levels -> BiFPN cells -> shared class and box heads."""

    backbone: NetworkSpec
    fpn: BiFPNSpec
    head_repeats: int
    anchors: AnchorSpec = field(default_factory=AnchorSpec)
    num_classes: int = 90
    resolution: int = 512
    backbone_indices: tuple[int, ...] = (2, 3, 4)  # stride 8, 16, 32 taps = P3..P5
    act: str = "swish"
    separable: bool = True
    redundant_bias: bool = True  # TF ports keep the conv bias before BN (effdet redundant_bias)
    padding: str = "same"
    bn_eps: float = 1e-3  # TF BN momentum 0.99, eps 1e-3 (effdet norm_kwargs)
    bn_momentum: float = 0.01

    def __post_init__(self) -> None:
        if self.fpn.min_level != self.anchors.min_level or self.fpn.max_level != self.anchors.max_level:
            raise SpecError(
                f"anchor levels {self.anchors.min_level}..{self.anchors.max_level} differ from the "
                f"BiFPN's {self.fpn.min_level}..{self.fpn.max_level}"
            )
        first = self.backbone_indices[0] + 1  # tap i has stride 2**(i+1)
        if first != self.fpn.min_level:
            raise SpecError(
                f"backbone_indices {self.backbone_indices} start at level {first}, "
                f"the BiFPN at {self.fpn.min_level}"
            )
        if self.num_classes < 1:
            raise SpecError(f"num_classes must be >= 1, got {self.num_classes}")
