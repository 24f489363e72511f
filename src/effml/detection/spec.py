"""Detector specs: a BiFPN is a generated list of fusion nodes, an EfficientDet is a backbone spec
plus a BiFPN spec, a head and anchors. Frozen, printable, JSON round-trippable like NetworkSpec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from effml.detection.anchors import AnchorSpec
from effml.detection.detector import ComposedSpec
from effml.errors import SpecError
from effml.spec import NetworkSpec
from effml.spec.notation import spec_from_dict, spec_to_dict

FUSIONS = ("fastattn", "attn", "sum")


@dataclass(frozen=True)
class FpnNode:
    """One fusion node: its pyramid level and the ids of the features it fuses.

    Ids index the running list [inputs P_min..P_max, node 0, node 1, ...] (reference 1.2).
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
    image_size: int = 512
    backbone_indices: tuple[int, ...] = (2, 3, 4)  # stride 8, 16, 32 taps = P3..P5
    act: str = "swish"
    separable: bool = True
    redundant_bias: bool = True  # TF ports keep the conv bias before BN (reference 1.2, 7.2)
    padding: str = "same"
    bn_eps: float = 1e-3  # TF BN momentum 0.99, eps 1e-3 (reference 1.2)
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



@dataclass(frozen=True)
class DetectorKind:
    """A detector family: its spec type, the builder of its network, and its JSON form.

    A built detector provides ``spec``, ``num_classes``, ``box_coder``, ``anchors(h, w)``,
    ``reset_head(num_classes)``, ``classifier_prefixes``, and a forward returning per-level
    ``(class_outputs, box_outputs)``; the predictor, the engine and the CLI need nothing more.
    """

    name: str
    spec_type: type
    build: Callable[[Any], Any]
    to_dict: Callable[[Any], dict[str, Any]]
    from_dict: Callable[[dict[str, Any]], Any]


_KINDS: dict[str, DetectorKind] = {}


def register_detector_kind(kind: DetectorKind) -> DetectorKind:
    """Make a detector family buildable from its spec and loadable from JSON."""
    _KINDS[kind.name] = kind
    return kind


def detector_kind(spec_or_name: Any) -> DetectorKind:
    """The family of a detector spec (or of a kind name)."""
    from effml.models.registry import _ensure_zoo  # the families register on import

    _ensure_zoo()
    if isinstance(spec_or_name, str):
        if spec_or_name not in _KINDS:
            raise SpecError(f"detector spec: unknown kind {spec_or_name!r}; known: {sorted(_KINDS)}")
        return _KINDS[spec_or_name]
    for kind in _KINDS.values():
        if isinstance(spec_or_name, kind.spec_type):
            return kind
    raise SpecError(f"no detector builder for spec type {type(spec_or_name).__name__}")


def detector_to_dict(spec: Any) -> dict[str, Any]:
    """A JSON-ready dict of any detector spec, tagged with its kind."""
    kind = detector_kind(spec)
    return {"kind": kind.name, **kind.to_dict(spec)}


def detector_from_dict(data: dict[str, Any]) -> Any:
    """Rebuild a detector spec from ``detector_to_dict`` output (unknown keys are errors)."""
    data = dict(data)
    return detector_kind(data.pop("kind", "efficientdet")).from_dict(data)


def check_keys(data: dict[str, Any], spec_type: type, what: str) -> None:
    """Refuse keys a spec dataclass does not have, naming them and the known ones."""
    names = {f.name for f in fields(spec_type)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SpecError(f"{what} spec: unknown keys {unknown}; expected some of {sorted(names)}")


def anchor_spec_from_dict(data: dict[str, Any]) -> AnchorSpec:
    """An AnchorSpec from JSON (aspect-ratio pairs arrive as lists)."""
    data = dict(data)
    if "aspect_ratios" in data:
        data["aspect_ratios"] = tuple(tuple(a) if isinstance(a, list) else a for a in data["aspect_ratios"])
    return AnchorSpec(**data)


def efficientdet_to_dict(spec: EfficientDetSpec) -> dict[str, Any]:
    """A JSON-ready dict of an EfficientDet spec."""
    out = {f.name: getattr(spec, f.name) for f in fields(spec)}
    out["backbone"] = spec_to_dict(spec.backbone)
    out["fpn"] = asdict(spec.fpn)
    out["anchors"] = asdict(spec.anchors)
    out["backbone_indices"] = list(spec.backbone_indices)
    return out


def efficientdet_from_dict(data: dict[str, Any]) -> EfficientDetSpec:
    """Rebuild an EfficientDet spec from ``efficientdet_to_dict`` output."""
    data = dict(data)
    check_keys(data, EfficientDetSpec, "EfficientDet")
    try:
        fpn = dict(data["fpn"])
        fpn["nodes"] = tuple(FpnNode(n["level"], tuple(n["inputs"])) for n in fpn.get("nodes", ()))
        data["fpn"] = BiFPNSpec(**fpn)
        data["anchors"] = anchor_spec_from_dict(data.get("anchors", {}))
        data["backbone"] = spec_from_dict(data["backbone"])
        if "backbone_indices" in data:
            data["backbone_indices"] = tuple(data["backbone_indices"])
        return EfficientDetSpec(**data)
    except (KeyError, TypeError) as e:
        raise SpecError(f"EfficientDet spec: missing or malformed field ({e})") from None
