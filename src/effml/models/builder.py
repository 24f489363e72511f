"""The one builder: a ``NetworkSpec`` becomes stem, stages of blocks and head, with feature taps."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from effml.layers import (
    DepthwiseSeparableConv, FusedMBConv, MBConv, TuckerConv, create_conv2d, drop_path_rates,
)
from effml.layers.padding import same_output_size
from effml.spec import BlockSpec, NetworkSpec


@dataclass(frozen=True)
class FeatureInfo:
    """One feature tap: the stage it follows, its channels and its stride (reduction)."""

    stage: int
    channels: int
    reduction: int


def _next_size(size: tuple[int, int] | None, stride: int, padding: str) -> tuple[int, int] | None:
    if size is None:
        return None
    if padding == "same":
        return same_output_size(size[0], stride), same_output_size(size[1], stride)
    return math.floor((size[0] - 1) / stride) + 1, math.floor((size[1] - 1) / stride) + 1


def _make_block(
    row: BlockSpec, in_ch: int, stride: int, spec: NetworkSpec, rate: float,
    size: tuple[int, int] | None,
) -> nn.Module:
    common = dict(
        act=row.act or spec.act, skip=row.skip, drop_path_rate=rate, bn_eps=spec.bn_eps,
        bn_momentum=spec.bn_momentum, padding=spec.padding, input_size=size,
    )
    if row.kind == "tucker":
        return TuckerConv(in_ch, row.out_channels, row.kernel_size[0], stride,
                          input_compression=row.input_compression,
                          output_compression=row.output_compression, **common)
    if row.kind == "er":
        return FusedMBConv(in_ch, row.out_channels, row.kernel_size[0], stride,
                           expand_ratio=row.expand_ratio, se_ratio=row.se_ratio, **common)
    if row.kind == "ds":
        return DepthwiseSeparableConv(in_ch, row.out_channels, row.kernel_size, stride,
                                      se_ratio=row.se_ratio, proj_groups=row.proj_groups, **common)
    return MBConv(in_ch, row.out_channels, row.kernel_size, stride, expand_ratio=row.expand_ratio,
                  se_ratio=row.se_ratio, exp_groups=row.exp_groups, proj_groups=row.proj_groups,
                  **common)


def build_stem(spec: NetworkSpec, input_size: tuple[int, int] | None) -> nn.Module:
    """The stride-2 3x3 stem conv (no bias; its BN follows separately as ``bn1``)."""
    return create_conv2d(spec.in_channels, spec.stem_channels, 3, 2,
                         padding=spec.padding, input_size=input_size)


def build_stages(
    spec: NetworkSpec, input_size: tuple[int, int] | None = None
) -> tuple[nn.Sequential, list[FeatureInfo]]:
    """Stages (an ``nn.Sequential`` of ``nn.Sequential``s) and the feature taps at each stride.

    A tap follows the last stage before each stride change and the last stage (timm's
    ``feature_info``), so index 0 is stride 2 and index 4 stride 32 for the zoo models.
    """
    rates = drop_path_rates(spec.drop_path, spec.num_blocks)
    size = _next_size(input_size, 2, spec.padding)
    reduction, in_ch, idx = 2, spec.stem_channels, 0
    stages: list[nn.Sequential] = []
    features: list[FeatureInfo] = []
    for s, stage in enumerate(spec.stages):
        blocks: list[nn.Module] = []
        for row in stage:
            for r in range(row.repeats):
                stride = row.stride if r == 0 else 1
                blocks.append(_make_block(row, in_ch, stride, spec, rates[idx], size))
                size = _next_size(size, stride, spec.padding)
                reduction *= stride
                in_ch, idx = row.out_channels, idx + 1
        stages.append(nn.Sequential(*blocks))
        next_stride = spec.stages[s + 1][0].stride if s + 1 < len(spec.stages) else 2
        if next_stride > 1:
            features.append(FeatureInfo(stage=s, channels=in_ch, reduction=reduction))
    return nn.Sequential(*stages), features


def init_weights_tf(module: nn.Module) -> None:
    """TF reference init: conv normal(0, sqrt(2 / fan_out)) with fan_out per group, dense
    uniform(+-1/sqrt(out)), BN gamma 1 beta 0 (reference/classification.md section 1.4)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.shape[0])
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
