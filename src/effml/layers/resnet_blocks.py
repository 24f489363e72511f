"""The two residual blocks of ResNet (He et al., CVPR 2016), as SpineNet uses them.

``BasicBlock`` (SpineNet's "residual" block): 3x3 -> BN -> act -> 3x3 -> BN, plus the shortcut,
then act; output width = ``filters``. ``Bottleneck`` (SpineNet's "bottleneck" block): 1x1 -> BN
-> act -> 3x3 (stride) -> BN -> act -> 1x1 (x4) -> BN, plus the shortcut, then act; output width
= 4 x ``filters``. The shortcut is a 1x1 conv + BN when the width or stride changes
(``downsample``, timm's name; module names follow timm/torchvision so their key layout reads
the same). Stochastic depth drops the residual branch per sample before the sum, as the TF
reference (``nn_blocks.BottleneckBlock``) does.
"""

from __future__ import annotations

import torch
from torch import nn

from effml.layers.activations import create_act
from effml.layers.conv import create_conv2d
from effml.layers.drop_path import drop_path
from effml.layers.norm import BatchNormAct2d

BOTTLENECK_EXPANSION = 4


class _ResNetBlock(nn.Module):
    """Shortcut, stochastic depth and the final activation shared by both blocks."""

    downsample: nn.Module | None
    drop_path_rate: float

    def _init_shortcut(self, in_channels: int, out_channels: int, stride: int, bn: dict,
                       padding: str, project: bool | None) -> None:
        if project is None:
            project = in_channels != out_channels or stride != 1
        if not project and (in_channels != out_channels or stride != 1):
            raise ValueError(f"an identity shortcut needs equal widths and stride 1, got "
                             f"{in_channels}->{out_channels}, stride {stride}")
        self.downsample = nn.Sequential(
            create_conv2d(in_channels, out_channels, 1, stride, padding=padding),
            BatchNormAct2d(out_channels, None, **bn),
        ) if project else None

    def _finish(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.act(drop_path(x, self.drop_path_rate, self.training) + shortcut)


class BasicBlock(_ResNetBlock):
    """Two 3x3 convs with a residual shortcut (SpineNet ``residual``); ``filters`` channels out."""

    expansion = 1

    def __init__(self, in_channels: int, filters: int, stride: int = 1, *, act: str = "relu",
                 project: bool | None = None, drop_path_rate: float = 0.0, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: str = "") -> None:
        super().__init__()
        bn = dict(eps=bn_eps, momentum=bn_momentum)
        self.conv1 = create_conv2d(in_channels, filters, 3, stride, padding=padding)
        self.bn1 = BatchNormAct2d(filters, act, **bn)
        self.conv2 = create_conv2d(filters, filters, 3, padding=padding)
        self.bn2 = BatchNormAct2d(filters, None, **bn)
        self.act = create_act(act)
        self.drop_path_rate = drop_path_rate
        self._init_shortcut(in_channels, filters, stride, bn, padding, project)

    @property
    def out_channels(self) -> int:
        """Output width."""
        return self.bn2.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        return self._finish(out, x)


class Bottleneck(_ResNetBlock):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4) with a residual shortcut (SpineNet ``bottleneck``)."""

    expansion = BOTTLENECK_EXPANSION

    def __init__(self, in_channels: int, filters: int, stride: int = 1, *, act: str = "relu",
                 project: bool | None = None, drop_path_rate: float = 0.0, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1, padding: str = "") -> None:
        super().__init__()
        bn = dict(eps=bn_eps, momentum=bn_momentum)
        out_channels = filters * BOTTLENECK_EXPANSION
        self.conv1 = create_conv2d(in_channels, filters, 1, padding=padding)
        self.bn1 = BatchNormAct2d(filters, act, **bn)
        self.conv2 = create_conv2d(filters, filters, 3, stride, padding=padding)
        self.bn2 = BatchNormAct2d(filters, act, **bn)
        self.conv3 = create_conv2d(filters, out_channels, 1, padding=padding)
        self.bn3 = BatchNormAct2d(out_channels, None, **bn)
        self.act = create_act(act)
        self.drop_path_rate = drop_path_rate
        self._init_shortcut(in_channels, out_channels, stride, bn, padding, project)

    @property
    def out_channels(self) -> int:
        """Output width (4 x filters)."""
        return self.bn3.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(out))
        return self._finish(out, x)


def zero_init_last_bn(block: nn.Module) -> None:
    """Start a residual block as the identity: zero the scale of the BN ending its branch
    (the TF reference's ``init_zero`` on the last BN; Goyal et al. 2017)."""
    last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
    nn.init.zeros_(last.weight)
