"""SpineNet (Du et al., CVPR 2020) and SpineNet-Mobile (Du et al., arXiv 2010.11426): scale-permuted
backbones as data.

A ``SpineNetSpec`` is the block table of ``spinenet_specs`` (rows ``(level, block_fn,
input_offsets, is_output)``) plus the scaling-map numbers. ``spinenet_graph`` derives the wiring
the reference code builds implicitly (tensorflow/models
``official/vision/modeling/backbones/spinenet.py``): each block's level, width and parents, the extra sums into output blocks, its stochastic-depth rate, and whether anything at
P<min>..P<max> depends on it. ``SpineNet`` builds that graph: stem, per-parent cross-scale
resampling, ``act(sum of parents)`` -> block group, endpoint 1x1 convs. The classification
variant is ``effml.models.spinenet_classifier``; the detector, ``effml.detection.retinanet``.
SpineNet is a backbone of both tasks, so it lives with the classification families.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from effml.errors import SpecError
from effml.layers.activations import create_act
from effml.layers.conv import create_conv2d
from effml.layers.init import init_convs_, variance_scaling_
from effml.layers.mbconv import MBConv, se_reduced_channels
from effml.layers.norm import BatchNormAct2d
from effml.layers.padding import create_max_pool2d
from effml.layers.resnet_blocks import BasicBlock, Bottleneck, zero_init_last_bn
from effml.layers.separable import ConvNormAct
from effml.layers.squeeze_excite import SqueezeExcite
from effml.models.spinenet_specs import (
    FILTER_SIZE_MAP, MOBILE_EXPAND_RATIO, MOBILE_FILTER_SIZE_MAP, MOBILE_SCALING_MAP, MOBILE_SE_RATIO,
    SCALING_MAP, SPINENET_BLOCK_SPECS, SPINENET_MOBILE_BLOCK_SPECS,
)
from effml.spec.composite import replace_fields

# Output width of a block = filters x this (spinenet.py: bottleneck 4x, residual 1x).
BLOCK_FNS = {"bottleneck": 4, "residual": 1, "mbconv": 1}
# "resnet": 7x7/2 conv (64) + BN + act + 3x3/2 max-pool, then two L2 bottleneck groups (SpineNet);
# "mobile": 3x3/2 conv + BN + act, then an MBConv group at L1 (stride 1) and one at L2 (stride 2).
STEMS = ("resnet", "mobile")
# "alpha": alpha-scaled 1x1, strided 3x3 conv then max-pools / nearest up, 1x1 (SpineNet);
# "depthwise": depthwise 3x3/2 per halving / nearest up, 1x1 (SpineNet-Mobile).
RESAMPLES = ("alpha", "depthwise")
RESNET_STEM_WIDTH = 64  # not scaled by filter_size_scale in the reference


@dataclass(frozen=True)
class SpineNetBlock:
    """One row of a block table: level, block kind, the blocks it merges, whether it is an output."""

    level: int
    block_fn: str
    input_offsets: tuple[int, ...]
    is_output: bool = False


def blocks_from_table(table: tuple[tuple[Any, ...], ...]) -> tuple[SpineNetBlock, ...]:
    """Rows ``(level, block_fn, input_offsets, is_output)`` -> ``SpineNetBlock``s."""
    return tuple(SpineNetBlock(int(r[0]), str(r[1]), tuple(int(o) for o in r[2]), bool(r[3])) for r in table)


@dataclass(frozen=True)
class SpineNetSpec:
    """A scale-permuted backbone: block table, filter map, scaling numbers, stem and resampling."""

    blocks: tuple[SpineNetBlock, ...]
    filter_size_map: tuple[tuple[int, int], ...]  # (level, filters) pairs
    endpoints_num_filters: int = 256
    filter_size_scale: float = 1.0
    resample_alpha: float = 0.5
    block_repeats: int = 1
    min_level: int = 3
    max_level: int = 7
    stem: str = "resnet"
    resample: str = "alpha"
    expand_ratio: float = MOBILE_EXPAND_RATIO  # mbconv blocks only
    se_ratio: float = MOBILE_SE_RATIO  # mbconv blocks only
    act: str = "swish"
    drop_path: float = 0.0  # stochastic depth of the last block; block i of n gets drop_path * (i+1)/n
    in_channels: int = 3
    bn_eps: float = 1e-3  # TF BN: momentum 0.99 (0.01 in PyTorch's convention), eps 1e-3
    bn_momentum: float = 0.01
    padding: str = ""

    def __post_init__(self) -> None:
        # Rows may come as table tuples (spinenet_specs) or as SpineNetBlocks.
        object.__setattr__(self, "blocks", tuple(
            b if isinstance(b, SpineNetBlock) else blocks_from_table((b,))[0] for b in self.blocks))
        object.__setattr__(self, "filter_size_map", tuple((int(l), int(f)) for l, f in self.filter_size_map))
        spinenet_graph(self)  # every consistency check, with a message naming the row

    def filters(self, level: int) -> int:
        """Block filters of a level after ``filter_size_scale`` (int() truncation, as the reference)."""
        return int(dict(self.filter_size_map)[level] * self.filter_size_scale)

    def width(self, level: int, block_fn: str) -> int:
        """Output channels of a block of this level and kind."""
        return self.filters(level) * BLOCK_FNS[block_fn]

    @property
    def num_levels(self) -> int:
        """Number of endpoint levels (5 for P3-P7)."""
        return self.max_level - self.min_level + 1

    def replace(self, **changes: Any) -> SpineNetSpec:
        """A copy with fields changed (unknown fields are a ``SpecError``)."""
        return replace_fields(self, changes)


@dataclass(frozen=True)
class SpineNetNode:
    """A block of the built graph: ``parents`` are resampled, ``extra`` summed as they are."""

    id: int
    level: int
    block_fn: str
    channels: int
    parents: tuple[int, ...]
    extra: tuple[int, ...]
    is_output: bool
    used: bool  # something at P<min_level>..P<max_level> depends on it (else it is not built)
    drop_path: float


def _stem_rows(spec: SpineNetSpec) -> tuple[tuple[int, str], ...]:
    return ((2, "bottleneck"), (2, "bottleneck")) if spec.stem == "resnet" else ((1, "mbconv"), (2, "mbconv"))


def _check_scalars(spec: SpineNetSpec) -> None:
    where = "SpineNet spec"
    if spec.stem not in STEMS:
        raise SpecError(f"{where}: stem {spec.stem!r} is unknown; use one of {STEMS}")
    if spec.resample not in RESAMPLES:
        raise SpecError(f"{where}: resample {spec.resample!r} is unknown; use one of {RESAMPLES}")
    positive = {"endpoints_num_filters": spec.endpoints_num_filters, "filter_size_scale": spec.filter_size_scale,
                "resample_alpha": spec.resample_alpha, "block_repeats": spec.block_repeats,
                "expand_ratio": spec.expand_ratio, "in_channels": spec.in_channels}
    for name, value in positive.items():
        if not value > 0:
            raise SpecError(f"{where}: {name} must be > 0, got {value!r}")
    if not isinstance(spec.block_repeats, int):
        raise SpecError(f"{where}: block_repeats must be an int, got {spec.block_repeats!r}")
    if not 0.0 <= spec.drop_path < 1.0:
        raise SpecError(f"{where}: drop_path must be in [0, 1), got {spec.drop_path!r}")
    if not 1 <= spec.min_level <= spec.max_level:
        raise SpecError(f"{where}: need 1 <= min_level <= max_level, got {spec.min_level}..{spec.max_level}")
    if spec.stem == "mobile" and 0 not in dict(spec.filter_size_map):
        raise SpecError(f"{where}: the mobile stem needs a level-0 entry (stem conv width) in filter_size_map")


def spinenet_graph(spec: SpineNetSpec) -> tuple[SpineNetNode, ...]:
    """The wiring of ``spec``: stem blocks (ids 0, 1) then one node per table row.

    Raises ``SpecError`` naming the row for an offset to itself or a later block, a level
    outside the filter map, an unknown block kind, or duplicate / missing output levels.
    """
    _check_scalars(spec)
    fmap = dict(spec.filter_size_map)
    top = max(fmap)
    nodes: list[dict[str, Any]] = []
    for level, fn in _stem_rows(spec):
        if level not in fmap:
            raise SpecError(f"SpineNet spec: the {spec.stem} stem needs level {level} in filter_size_map")
        nodes.append(dict(level=level, block_fn=fn, channels=spec.width(level, fn), parents=(), extra=(),
                          is_output=False, drop_path=0.0))
    outputs: dict[int, int] = {}
    consumers = [0] * len(nodes)
    n = len(spec.blocks)
    for i, row in enumerate(spec.blocks):
        bid = i + len(_stem_rows(spec))
        where = f"SpineNet spec row {i} (block {bid})"
        if row.block_fn not in BLOCK_FNS:
            raise SpecError(f"{where}: block_fn {row.block_fn!r} is unknown; use one of {sorted(BLOCK_FNS)}")
        if row.level not in fmap or row.level < 1:
            raise SpecError(f"{where}: level {row.level} is out of range; filter_size_map has levels "
                            f"{min(max(1, min(fmap)), top)}..{top}")
        if not row.input_offsets:
            raise SpecError(f"{where}: input_offsets is empty; a block merges at least one earlier block")
        bad = [o for o in row.input_offsets if not 0 <= o < bid]
        if bad:
            raise SpecError(f"{where}: input offsets {bad} must name earlier blocks 0..{bid - 1} "
                            f"(an offset to the block itself or a later block has no value yet)")
        channels = spec.width(row.level, row.block_fn)
        for o in row.input_offsets:
            consumers[o] += 1
        extra: list[int] = []
        if row.is_output:
            # Reference: earlier blocks nothing consumed, with the target's size and width, are
            # added unresampled to an output block.
            for j, node in enumerate(nodes):
                if consumers[j] == 0 and node["level"] == row.level and node["channels"] == channels:
                    extra.append(j)
                    consumers[j] += 1
            if row.level in outputs:
                raise SpecError(f"{where}: level {row.level} already has an output block "
                                f"({outputs[row.level]}); each level has one")
            outputs[row.level] = bid
        nodes.append(dict(level=row.level, block_fn=row.block_fn, channels=channels,
                          parents=tuple(row.input_offsets), extra=tuple(extra), is_output=row.is_output,
                          drop_path=spec.drop_path * (i + 1) / n))
        consumers.append(0)
    missing = [lvl for lvl in range(spec.min_level, spec.max_level + 1) if lvl not in outputs]
    if missing:
        raise SpecError(f"SpineNet spec: no output block for level(s) {missing}; levels "
                        f"{spec.min_level}..{spec.max_level} each need one row with is_output=True "
                        f"(outputs found: {sorted(outputs)})")
    used = set()
    todo = [outputs[lvl] for lvl in range(spec.min_level, spec.max_level + 1)]
    while todo:
        j = todo.pop()
        if j not in used:
            used.add(j)
            todo.extend(nodes[j]["parents"] + nodes[j]["extra"])
    used.update(range(len(_stem_rows(spec))))
    return tuple(SpineNetNode(id=j, used=j in used, **node) for j, node in enumerate(nodes))


def output_ids(spec: SpineNetSpec, graph: tuple[SpineNetNode, ...] | None = None) -> list[int]:
    """Block ids of the P<min_level>..P<max_level> outputs, in level order."""
    graph = graph or spinenet_graph(spec)
    by_level = {node.level: node.id for node in graph if node.is_output}
    return [by_level[lvl] for lvl in range(spec.min_level, spec.max_level + 1)]


# -- zoo specs ----------------------------------------------------------------------------------


def spinenet_spec(model_id: str = "49", **overrides: Any) -> SpineNetSpec:
    """SpineNet-``model_id`` (49S, 49, 96, 143, 143L, 190) from the scaling map."""
    if model_id not in SCALING_MAP:
        raise SpecError(f"SpineNet-{model_id} is not in the scaling map; use one of {sorted(SCALING_MAP)}")
    s = SCALING_MAP[model_id]
    spec = SpineNetSpec(blocks=blocks_from_table(SPINENET_BLOCK_SPECS),
                        filter_size_map=tuple(FILTER_SIZE_MAP.items()),
                        endpoints_num_filters=s.endpoints_num_filters, filter_size_scale=s.filter_size_scale,
                        resample_alpha=s.resample_alpha, block_repeats=s.block_repeats)
    return spec.replace(**overrides) if overrides else spec


def spinenet_mobile_spec(model_id: str = "49", **overrides: Any) -> SpineNetSpec:
    """SpineNet-Mobile-``model_id`` (49, 49S, 49XS) from its scaling map."""
    if model_id not in MOBILE_SCALING_MAP:
        raise SpecError(f"SpineNet-Mobile-{model_id} is unknown; use one of {sorted(MOBILE_SCALING_MAP)}")
    s = MOBILE_SCALING_MAP[model_id]
    spec = SpineNetSpec(blocks=blocks_from_table(SPINENET_MOBILE_BLOCK_SPECS),
                        filter_size_map=tuple(MOBILE_FILTER_SIZE_MAP.items()),
                        endpoints_num_filters=s.endpoints_num_filters, filter_size_scale=s.filter_size_scale,
                        resample_alpha=1.0, block_repeats=s.block_repeats, stem="mobile", resample="depthwise")
    return spec.replace(**overrides) if overrides else spec


# -- modules --------------------------------------------------------------------------------------


class AlphaResample(nn.Module):
    """SpineNet's cross-scale connection (spinenet.py ``_resample_with_alpha``): 1x1 to
    alpha x the parent's block filters + BN + act; down: 3x3/2 conv + BN + act, then a 3x3/2
    max-pool per further halving; up: nearest; 1x1 to the target width + BN."""

    def __init__(self, in_channels: int, in_block_fn: str, steps: int, out_channels: int, alpha: float,
                 bn: dict[str, Any]) -> None:
        super().__init__()
        mid = int(in_channels / BLOCK_FNS[in_block_fn] * alpha)
        act, padding = bn.pop("act"), bn["padding"]
        self.reduce = ConvNormAct(in_channels, mid, 1, act=act, **bn)
        down: list[nn.Module] = []
        if steps > 0:
            down.append(ConvNormAct(mid, mid, 3, 2, act=act, **bn))
            down.extend(create_max_pool2d(3, 2, padding) for _ in range(steps - 1))
        self.downsample = nn.Sequential(*down)
        self.upsample = steps < 0
        self.project = ConvNormAct(mid, out_channels, 1, act=None, **bn)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.downsample(self.reduce(x))
        if self.upsample:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.project(x)


class DepthwiseResample(nn.Module):
    """SpineNet-Mobile's cross-scale connection (spinenet_mobile.py): a depthwise 3x3/2 + BN + act
    per halving, or nearest up, then 1x1 to the target width + BN."""

    def __init__(self, in_channels: int, steps: int, out_channels: int, bn: dict[str, Any]) -> None:
        super().__init__()
        act, padding = bn.pop("act"), bn["padding"]
        norm = dict(eps=bn["bn_eps"], momentum=bn["bn_momentum"])
        self.downsample = nn.Sequential(*[
            nn.Sequential(create_conv2d(in_channels, in_channels, 3, 2, depthwise=True, padding=padding),
                          BatchNormAct2d(in_channels, act, **norm))
            for _ in range(max(steps, 0))])
        self.upsample = steps < 0
        self.project = ConvNormAct(in_channels, out_channels, 1, act=None, **bn)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.downsample(x)
        if self.upsample:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.project(x)


class ScalePermutedBlock(nn.Module):
    """Resample each parent to this block's level and width, add the extra inputs, act, then
    the block group."""

    def __init__(self, node: SpineNetNode, resample: list[nn.Module], group: nn.Sequential, act: str) -> None:
        super().__init__()
        self.level, self.parents, self.extra = node.level, node.parents, node.extra
        self.resample = nn.ModuleList(resample)
        self.act = create_act(act)
        self.blocks = group

    def forward(self, feats: list[torch.Tensor | None], sizes: list[tuple[int, int]]) -> torch.Tensor:
        size = sizes[self.level]
        x = self.resample[0](feats[self.parents[0]], size)
        for resample, p in zip(self.resample[1:], self.parents[1:]):
            x = x + resample(feats[p], size)
        for e in self.extra:
            x = x + feats[e]
        return self.blocks(self.act(x))


def _block_group(spec: SpineNetSpec, block_fn: str, in_ch: int, out_ch: int, stride: int,
                 rate: float) -> nn.Sequential:
    """``block_repeats`` blocks; only the first may stride or project (reference ``_block_group``)."""
    bn = dict(act=spec.act, drop_path_rate=rate, bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum,
              padding=spec.padding)
    blocks: list[nn.Module] = []
    for r in range(spec.block_repeats):
        cin, s = (in_ch, stride) if r == 0 else (out_ch, 1)
        if block_fn == "mbconv":
            block = MBConv(cin, out_ch, 3, s, expand_ratio=spec.expand_ratio, se_ratio=0.0, **bn)
            if spec.se_ratio > 0:  # TF SqueezeExcitation: ReLU inside, hard-sigmoid gate
                mid = block.bn1.num_features
                block.se = SqueezeExcite(mid, se_reduced_channels(cin, spec.se_ratio), "relu", "hard_sigmoid")
        else:
            cls = Bottleneck if block_fn == "bottleneck" else BasicBlock
            block = cls(cin, out_ch // BLOCK_FNS[block_fn], s, **bn)
        blocks.append(block)
    return nn.Sequential(*blocks)


class SpineNet(nn.Module):
    """The backbone of a ``SpineNetSpec``; forward returns the endpoint maps P<min>..P<max>
    (``endpoints_num_filters`` channels each), finest first."""

    def __init__(self, spec: SpineNetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.graph = spinenet_graph(spec)
        self.output_ids = output_ids(spec, self.graph)
        bn = dict(bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum, padding=spec.padding)
        if spec.stem == "resnet":
            self.stem = nn.Sequential(ConvNormAct(spec.in_channels, RESNET_STEM_WIDTH, 7, 2, act=spec.act, **bn),
                                      create_max_pool2d(3, 2, spec.padding))
            widths = [RESNET_STEM_WIDTH, self.graph[0].channels]
            strides = [1, 1]
        else:
            w0 = spec.filters(0)
            self.stem = ConvNormAct(spec.in_channels, w0, 3, 2, act=spec.act, **bn)
            widths = [w0, self.graph[0].channels]
            strides = [1, 2]
        self.stem_blocks = nn.ModuleList([
            _block_group(spec, node.block_fn, widths[i], node.channels, strides[i], 0.0)
            for i, node in enumerate(self.graph[:2])])
        self.blocks = nn.ModuleDict()
        for node in self.graph[2:]:
            if node.used:
                resample = [self._resample(self.graph[p], node) for p in node.parents]
                group = _block_group(spec, node.block_fn, node.channels, node.channels, 1, node.drop_path)
                self.blocks[str(node.id)] = ScalePermutedBlock(node, resample, group, spec.act)
        self.endpoints = nn.ModuleList([
            ConvNormAct(self.graph[j].channels, spec.endpoints_num_filters, 1, act=spec.act, **bn)
            for j in self.output_ids])
        self.channels = [spec.endpoints_num_filters] * spec.num_levels
        init_spinenet(self)

    def _resample(self, parent: SpineNetNode, node: SpineNetNode) -> nn.Module:
        s = self.spec
        bn = dict(act=s.act, bn_eps=s.bn_eps, bn_momentum=s.bn_momentum, padding=s.padding)
        steps = node.level - parent.level
        if s.resample == "alpha":
            return AlphaResample(parent.channels, parent.block_fn, steps, node.channels, s.resample_alpha, bn)
        return DepthwiseResample(parent.channels, steps, node.channels, bn)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        sizes = [tuple(x.shape[-2:])]
        for _ in range(max(n.level for n in self.graph)):
            h, w = sizes[-1]
            sizes.append(((h - 1) // 2 + 1, (w - 1) // 2 + 1))  # every stride-2 op rounds up
        feats: list[torch.Tensor | None] = []
        x = self.stem(x)
        for group in self.stem_blocks:
            x = group(x)
            feats.append(x)
        for node in self.graph[2:]:
            feats.append(self.blocks[str(node.id)](feats, sizes) if node.used else None)
        return [conv(feats[j]) for conv, j in zip(self.endpoints, self.output_ids)]


def init_spinenet(module: nn.Module) -> None:
    """TF's defaults: variance-scaling (fan-in) conv weights, BN 1/0, the last BN of every
    ResNet block zeroed (tensorflow/tpu ``init_zero``)."""
    init_convs_(module, variance_scaling_)
    for m in module.modules():
        if isinstance(m, (Bottleneck, BasicBlock)):
            zero_init_last_bn(m)
