"""BiFPN (Tan et al., EfficientDet, CVPR 2020, section 3): repeated cells of weighted fusion
nodes whose wiring is data (``BiFPNSpec.nodes``, google/automl ``tf2/fpn_configs.py``).

Module and parameter names follow effdet (``resample``, ``cell.<i>.fnode.<j>.combine`` /
``after_combine``) so its checkpoints load without a key map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effml.detection.spec import BiFPNSpec, FpnNode
from effml.layers.activations import create_act
from effml.layers.padding import create_max_pool2d
from effml.layers.separable import ConvNormAct, SeparableConv2d

FUSION_EPS = 1e-4  # fast normalised fusion epsilon (paper eq. 3)


class ResampleFeatureMap(nn.Sequential):
    """Bring a feature to the node's width and level: [1x1 conv + BN] then max-pool down or
    nearest-neighbour up (to the exact target size, so odd input sizes work)."""

    def __init__(self, in_channels: int, out_channels: int, in_level: int, out_level: int, *,
                 padding: str, redundant_bias: bool, bn_eps: float, bn_momentum: float) -> None:
        super().__init__()
        if in_channels != out_channels:
            self.add_module("conv", ConvNormAct(in_channels, out_channels, 1, padding=padding,
                                                bias=redundant_bias, bn_eps=bn_eps, bn_momentum=bn_momentum))
        if out_level > in_level:
            stride = 2 ** (out_level - in_level)
            # TF: kernel stride+1, 'SAME' padding (automl ResampleFeatureMap)
            self.add_module("downsample", create_max_pool2d(stride + 1, stride, padding))
        self.upsample = out_level < in_level

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        x = super().forward(x)
        if self.upsample:
            x = F.interpolate(x, size=size, mode="nearest")
        return x


class FeatureFusion(nn.Module):
    """Resample a node's inputs and fuse them: fast normalised ("fastattn"), softmax ("attn") or sum."""

    def __init__(self, node: FpnNode, levels: list[int], channels: list[int], width: int, fusion: str,
                 **conv_kwargs) -> None:
        super().__init__()
        self.inputs = node.inputs
        self.fusion = fusion
        self.resample = nn.ModuleDict({
            str(i): ResampleFeatureMap(channels[i], width, levels[i], node.level, **conv_kwargs)
            for i in node.inputs
        })
        if fusion in ("fastattn", "attn"):
            self.edge_weights = nn.Parameter(torch.ones(len(node.inputs)))  # one scalar per edge

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        xs = [r(features[i], size) for i, r in zip(self.inputs, self.resample.values())]
        if self.fusion == "sum":
            weights = None
        elif self.fusion == "fastattn":
            w = F.relu(self.edge_weights.to(xs[0].dtype))
            weights = w / (w.sum() + FUSION_EPS)
        else:
            weights = torch.softmax(self.edge_weights.to(xs[0].dtype), dim=0)
        out = xs[0] if weights is None else xs[0] * weights[0]
        for k in range(1, len(xs)):
            out = out + (xs[k] if weights is None else xs[k] * weights[k])
        return out


class FusionNode(nn.Module):
    """One BiFPN node: fuse, then act -> separable 3x3 conv -> BN (activation first, automl ``OpAfterCombine``)."""

    def __init__(self, combine: FeatureFusion, after_combine: nn.Module) -> None:
        super().__init__()
        self.combine = combine
        self.after_combine = after_combine

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return self.after_combine(self.combine(features, size))


class BiFPNCell(nn.Module):
    """One BiFPN cell: every node of the spec in order; outputs the last node of each level."""

    def __init__(self, spec: BiFPNSpec, channels: list[int], *, act: str, separable: bool,
                 padding: str, redundant_bias: bool, bn_eps: float, bn_momentum: float) -> None:
        super().__init__()
        self.spec = spec
        levels = list(range(spec.min_level, spec.max_level + 1))
        channels = list(channels)
        conv_kwargs = dict(padding=padding, redundant_bias=redundant_bias, bn_eps=bn_eps,
                           bn_momentum=bn_momentum)
        self.fnode = nn.ModuleList()
        for node in spec.nodes:
            combine = FeatureFusion(node, levels, channels, spec.width, spec.fusion, **conv_kwargs)
            conv_cls = SeparableConv2d if separable else ConvNormAct
            after = nn.Sequential()
            after.add_module("act", create_act(act))
            after.add_module("conv", conv_cls(spec.width, spec.width, 3, padding=padding, bias=redundant_bias,
                                              bn_eps=bn_eps, bn_momentum=bn_momentum))
            self.fnode.append(FusionNode(combine, after))
            levels.append(node.level)
            channels.append(spec.width)
        # the cell's output for each level is its last node at that level
        last = {lvl: i for i, lvl in enumerate(levels)}
        self.output_ids = [last[lvl] for lvl in range(spec.min_level, spec.max_level + 1)]
        self.node_levels = [n.level - spec.min_level for n in spec.nodes]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [(f.shape[-2], f.shape[-1]) for f in features]
        features = list(features)
        for node, level in zip(self.fnode, self.node_levels):
            features.append(node(features, sizes[level]))
        return [features[i] for i in self.output_ids]


class BiFPN(nn.Module):
    """Backbone taps -> extra coarser levels (P6, P7[, P8]) -> ``cells`` BiFPN cells."""

    def __init__(self, spec: BiFPNSpec, in_channels: list[int], *, act: str, separable: bool = True,
                 padding: str = "", redundant_bias: bool = False, bn_eps: float = 1e-3,
                 bn_momentum: float = 0.01) -> None:
        super().__init__()
        self.spec = spec
        conv_kwargs = dict(padding=padding, redundant_bias=redundant_bias, bn_eps=bn_eps,
                           bn_momentum=bn_momentum)
        channels = list(in_channels)
        # Extra levels: P6 = 1x1 conv + BN + max-pool of the last tap; P7 = max-pool of P6
        # (automl efficientdet_keras.py EfficientDetNet). Keys are the level's index, as effdet's.
        self.resample = nn.ModuleDict()
        for idx in range(len(channels), spec.num_levels):
            level = spec.min_level + idx
            self.resample[str(idx)] = ResampleFeatureMap(channels[-1], spec.width, level - 1, level,
                                                         **conv_kwargs)
            channels.append(spec.width)
        self.cell = nn.Sequential()
        for i in range(spec.cells):
            self.cell.add_module(str(i), BiFPNCell(spec, channels, act=act, separable=separable, **conv_kwargs))
            channels = [spec.width] * spec.num_levels

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = list(features)
        for resample in self.resample.values():
            features.append(resample(features[-1]))
        for cell in self.cell:
            features = cell(features)
        return features
