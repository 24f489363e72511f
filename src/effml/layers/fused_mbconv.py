"""The fused inverted bottleneck: MobileDets' "fused IBN" (Xiong et al., CVPR 2021), the
EfficientNet-EdgeTPU block that timm calls ``EdgeResidual``.

Order (TF ``ssd_mobiledet_feature_extractor._fused_conv``, tensorflow/models):
``full kxk conv (stride) to in*e -> BN -> act -> [SE] -> 1x1 project -> BN -> [drop path] +
shortcut``. The expansion 1x1 and the depthwise kxk of MBConv are fused into one full conv, which
runs faster on accelerators (EdgeTPU, DSP, GPU) than its MAC count suggests. Module names are
timm's (``conv_exp, bn1, se, conv_pwl, bn2``), so its ``EdgeResidual`` state_dicts load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from effml.layers.conv import create_conv2d
from effml.layers.mbconv import _Residual
from effml.layers.norm import BatchNormAct2d
from effml.layers.squeeze_excite import SqueezeExcite
from effml.spec.channels import expanded_channels, se_reduced_channels


class FusedMBConv(_Residual):
    """Full kxk expansion conv -> [SE] -> linear 1x1 projection, residual when shapes allow."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *,
        expand_ratio: float = 4.0, se_ratio: float = 0.0, act: str = "relu6", skip: bool = True,
        drop_path_rate: float = 0.0, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
        padding: str = "", input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        bn = dict(eps=bn_eps, momentum=bn_momentum)
        mid = expanded_channels(in_channels, expand_ratio)
        self.conv_exp = create_conv2d(in_channels, mid, kernel_size, stride, padding=padding,
                                      input_size=input_size)
        self.bn1 = BatchNormAct2d(mid, act, **bn)
        self.se = (SqueezeExcite(mid, se_reduced_channels(in_channels, se_ratio), act)
                   if se_ratio > 0 else nn.Identity())
        self.conv_pwl = create_conv2d(mid, out_channels, 1, padding=padding)
        self.bn2 = BatchNormAct2d(out_channels, None, **bn)
        self._init_residual(in_channels, out_channels, stride, skip, drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.se(self.bn1(self.conv_exp(x)))
        x = self.bn2(self.conv_pwl(x))
        return self._add_shortcut(x, shortcut)
