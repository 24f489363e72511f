"""The two blocks of the MBConv family: depthwise-separable and MBConv (inverted residual).

Order (TF ``MBConvBlock.call``, tensorflow/tpu ``efficientnet_model.py``):
``[1x1 expand -> BN -> act] -> kxk depthwise (stride) -> BN -> act -> SE -> 1x1 project -> BN
-> [drop path] + shortcut``. Module names are timm's, so timm state_dicts load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from effml.layers.conv import create_conv2d
from effml.layers.drop_path import drop_path
from effml.layers.norm import BatchNormAct2d
from effml.layers.squeeze_excite import SqueezeExcite
from effml.spec.channels import expanded_channels, se_reduced_channels


def _group_kernels(groups: int) -> list[int]:
    return [1] * groups  # MixNet's grouped 1x1 convs ('a1.1', 'p1.1') are MixConvs of 1x1 kernels


class _Residual(nn.Module):
    """Shared shortcut logic: residual only for stride 1 and equal widths, unless disabled."""

    has_skip: bool
    drop_path_rate: float

    def _init_residual(self, in_ch: int, out_ch: int, stride: int, skip: bool, rate: float) -> None:
        self.has_skip = skip and stride == 1 and in_ch == out_ch
        self.drop_path_rate = rate

    def _add_shortcut(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.has_skip:
            return drop_path(x, self.drop_path_rate, self.training) + shortcut
        return x


class DepthwiseSeparableConv(_Residual):
    """dw kxk -> BN -> act -> [SE] -> pw 1x1 -> BN (timm ``ds``; EfficientNet's expand-1 MBConv)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Sequence[int], stride: int = 1, *,
        se_ratio: float = 0.0, act: str = "swish", skip: bool = True, drop_path_rate: float = 0.0,
        bn_eps: float = 1e-5, bn_momentum: float = 0.1, padding: str = "",
        input_size: tuple[int, int] | None = None, proj_groups: int = 1,
    ) -> None:
        super().__init__()
        bn = dict(eps=bn_eps, momentum=bn_momentum)
        self.conv_dw = create_conv2d(in_channels, in_channels, kernel_size, stride, depthwise=True,
                                     padding=padding, input_size=input_size)
        self.bn1 = BatchNormAct2d(in_channels, act, **bn)
        self.se = (SqueezeExcite(in_channels, se_reduced_channels(in_channels, se_ratio), act)
                   if se_ratio > 0 else nn.Identity())
        self.conv_pw = create_conv2d(in_channels, out_channels, _group_kernels(proj_groups), padding=padding)
        self.bn2 = BatchNormAct2d(out_channels, None, **bn)
        self._init_residual(in_channels, out_channels, stride, skip, drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.se(self.bn1(self.conv_dw(x)))
        x = self.bn2(self.conv_pw(x))
        return self._add_shortcut(x, shortcut)


class MBConv(_Residual):
    """Mobile inverted bottleneck (MnasNet / EfficientNet MBConv; timm ``InvertedResidual``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: Sequence[int], stride: int = 1, *,
        expand_ratio: float = 6.0, se_ratio: float = 0.0, act: str = "swish", skip: bool = True,
        drop_path_rate: float = 0.0, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
        padding: str = "", input_size: tuple[int, int] | None = None,
        exp_groups: int = 1, proj_groups: int = 1,
    ) -> None:
        super().__init__()
        bn = dict(eps=bn_eps, momentum=bn_momentum)
        mid = expanded_channels(in_channels, expand_ratio)
        self.conv_pw = create_conv2d(in_channels, mid, _group_kernels(exp_groups), padding=padding)
        self.bn1 = BatchNormAct2d(mid, act, **bn)
        self.conv_dw = create_conv2d(mid, mid, kernel_size, stride, depthwise=True,
                                     padding=padding, input_size=input_size)
        self.bn2 = BatchNormAct2d(mid, act, **bn)
        self.se = (SqueezeExcite(mid, se_reduced_channels(in_channels, se_ratio), act)
                   if se_ratio > 0 else nn.Identity())
        self.conv_pwl = create_conv2d(mid, out_channels, _group_kernels(proj_groups), padding=padding)
        self.bn3 = BatchNormAct2d(out_channels, None, **bn)
        self._init_residual(in_channels, out_channels, stride, skip, drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn1(self.conv_pw(x))
        x = self.se(self.bn2(self.conv_dw(x)))
        x = self.bn3(self.conv_pwl(x))
        return self._add_shortcut(x, shortcut)
