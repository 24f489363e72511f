"""The one builder: a ``NetworkSpec``'s layer plan becomes stem, stages of blocks and head.

Every fact about a layer (widths, stride, input size, drop-path rate) comes from its ``LayerPlan``
(spec/plan.py); this file only maps each block kind to its module, in one table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from effml.layers import DepthwiseSeparableConv, FusedMBConv, MBConv, TuckerConv, create_conv2d
from effml.spec import NetworkSpec
from effml.spec.plan import ConvPlan, FeatureInfo, LayerPlan, NetworkPlan, plan

__all__ = [
    "BLOCK_MODULES", "BlockModule", "FeatureInfo", "build_block", "build_blocks", "build_conv",
    "build_stages", "build_stem",
]


@dataclass(frozen=True)
class BlockModule:
    """How one block kind becomes a module: its class, the constructor call from a ``LayerPlan``
    (plus the network-wide keywords), and its (conv, BN) attribute pairs in forward order, which
    ``effml.models.fuse.fuse_for_inference`` folds together."""

    cls: type[nn.Module]
    build: Callable[[LayerPlan, dict[str, Any]], nn.Module]
    fuse_pairs: tuple[tuple[str, str], ...]


def _ds(layer: LayerPlan, common: dict[str, Any]) -> nn.Module:
    return DepthwiseSeparableConv(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                  se_ratio=layer.block.se_ratio, proj_groups=layer.block.proj_groups,
                                  **common)


def _ir(layer: LayerPlan, common: dict[str, Any]) -> nn.Module:
    b = layer.block
    return MBConv(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                  expand_ratio=b.expand_ratio, se_ratio=b.se_ratio, exp_groups=b.exp_groups,
                  proj_groups=b.proj_groups, **common)


def _er(layer: LayerPlan, common: dict[str, Any]) -> nn.Module:
    return FusedMBConv(layer.in_channels, layer.out_channels, layer.kernel_size[0], layer.stride,
                       expand_ratio=layer.block.expand_ratio, se_ratio=layer.block.se_ratio, **common)


def _tucker(layer: LayerPlan, common: dict[str, Any]) -> nn.Module:
    return TuckerConv(layer.in_channels, layer.out_channels, layer.kernel_size[0], layer.stride,
                      input_compression=layer.block.input_compression,
                      output_compression=layer.block.output_compression, **common)


# The one table of block kinds on the module side, keyed as ``effml.spec.BLOCK_KINDS`` (whose
# notation and field rules stay in spec/blocks.py: spec sits below layers). A new kind adds one row
# here, one in ``BLOCK_KINDS`` and its widths in ``effml.spec.plan.RESOLVE``.
BLOCK_MODULES: dict[str, BlockModule] = {
    "ds": BlockModule(DepthwiseSeparableConv, _ds, (("conv_dw", "bn1"), ("conv_pw", "bn2"))),
    "ir": BlockModule(MBConv, _ir, (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3"))),
    "er": BlockModule(FusedMBConv, _er, (("conv_exp", "bn1"), ("conv_pwl", "bn2"))),
    "tucker": BlockModule(TuckerConv, _tucker,
                          (("conv_pw", "bn1"), ("conv_core", "bn2"), ("conv_pwl", "bn3"))),
}


def build_block(layer: LayerPlan, spec: NetworkSpec, *, static_size: bool = True) -> nn.Module:
    """The module of one planned block; ``static_size`` lets TF 'SAME' convs precompute padding."""
    common = dict(
        act=layer.act, skip=layer.block.skip, drop_path_rate=layer.drop_path_rate, bn_eps=spec.bn_eps,
        bn_momentum=spec.bn_momentum, padding=spec.padding,
        input_size=layer.input_size if static_size else None,
    )
    return BLOCK_MODULES[layer.kind].build(layer, common)


def build_blocks(net: NetworkPlan, *, static_size: bool = True) -> nn.Sequential:
    """The stages of a plan: an ``nn.Sequential`` of ``nn.Sequential``s of blocks (timm's keys)."""
    stages: list[list[nn.Module]] = [[] for _ in net.spec.stages]
    for layer in net.layers:
        stages[layer.stage].append(build_block(layer, net.spec, static_size=static_size))
    return nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))


def build_conv(conv: ConvPlan, padding: str, *, static_size: bool = True) -> nn.Module:
    """A planned conv (no bias) in the network's padding flavour."""
    kernel = conv.kernel_size[0] if len(conv.kernel_size) == 1 else list(conv.kernel_size)
    return create_conv2d(conv.in_channels, conv.out_channels, kernel, conv.stride, depthwise=conv.depthwise,
                         padding=padding, input_size=conv.input_size if static_size else None)


def build_stem(spec: NetworkSpec, input_size: tuple[int, int] | None) -> nn.Module:
    """The stride-2 3x3 stem conv (no bias; its BN follows separately as ``bn1``)."""
    return build_conv(plan(spec, input_size).stem, spec.padding, static_size=input_size is not None)


def build_stages(
    spec: NetworkSpec, input_size: tuple[int, int] | None = None
) -> tuple[nn.Sequential, list[FeatureInfo]]:
    """Stages (an ``nn.Sequential`` of ``nn.Sequential``s) and the feature taps at each stride.

    Without ``input_size`` the TF 'SAME' convs pad for whatever size they are fed.
    """
    net = plan(spec, input_size)
    return build_blocks(net, static_size=input_size is not None), list(net.features)
