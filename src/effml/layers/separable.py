"""Conv (+BN+act) and separable conv (+BN+act) units of detection necks and heads.

Key names follow effdet (``conv.weight``/``bn.*``; ``conv_dw``/``conv_pw``/``bn``) so its
checkpoints load unchanged. The BN is optional: EfficientDet's heads keep one BN per pyramid level
outside the shared conv (google/automl ``efficientdet_keras.py`` ``ClassNet`` / ``BoxNet``).
"""

from __future__ import annotations

import torch
from torch import nn

from effml.layers.conv import create_conv2d
from effml.layers.norm import BatchNormAct2d


class ConvNormAct(nn.Module):
    """conv -> [BN -> act]; ``norm=False`` leaves the conv alone (its bias then matters)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, *,
                 padding: str = "", bias: bool = False, norm: bool = True, act: str | None = None,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv = create_conv2d(in_channels, out_channels, kernel_size, stride, padding=padding, bias=bias)
        self.bn = BatchNormAct2d(out_channels, act, bn_eps, bn_momentum) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SeparableConv2d(nn.Module):
    """Depthwise k x k -> pointwise 1x1 (with optional bias) -> [BN -> act]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, *,
                 padding: str = "", bias: bool = False, norm: bool = True, act: str | None = None,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.conv_dw = create_conv2d(in_channels, in_channels, kernel_size, stride, depthwise=True,
                                     padding=padding)
        self.conv_pw = create_conv2d(in_channels, out_channels, 1, padding=padding, bias=bias)
        self.bn = BatchNormAct2d(out_channels, act, bn_eps, bn_momentum) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv_pw(self.conv_dw(x)))
