"""Tucker convolution (MobileDets, Xiong et al., CVPR 2021): a generalised bottleneck.

A full kxk conv is factorised as in a Tucker decomposition of its kernel: a 1x1 conv compresses
the input channels to an input rank, a full kxk "core" conv maps it to an output rank, and a
linear 1x1 conv restores the output width (TF ``ssd_mobiledet_feature_extractor._tucker_conv``,
tensorflow/models): ``1x1 -> BN -> act -> kxk (stride) -> BN -> act -> 1x1 -> BN ->
[drop path] + shortcut``. With compressions < 1 it is cheaper than a full conv and, unlike an
IBN, has no depthwise conv (slow on EdgeTPU / DSP).
"""

from __future__ import annotations

import torch

from effml.layers.conv import create_conv2d
from effml.layers.mbconv import _Residual
from effml.layers.norm import BatchNormAct2d
from effml.spec.channels import scale_filters


class TuckerConv(_Residual):
    """1x1 to round8(in * input_compression) -> kxk to round8(out * output_compression) -> 1x1."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, *,
        input_compression: float = 0.25, output_compression: float = 0.25, act: str = "relu6",
        skip: bool = True, drop_path_rate: float = 0.0, bn_eps: float = 1e-5, bn_momentum: float = 0.1,
        padding: str = "", input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        bn = dict(eps=bn_eps, momentum=bn_momentum)
        in_rank = scale_filters(in_channels, input_compression)
        out_rank = scale_filters(out_channels, output_compression)
        self.conv_pw = create_conv2d(in_channels, in_rank, 1, padding=padding)
        self.bn1 = BatchNormAct2d(in_rank, act, **bn)
        self.conv_core = create_conv2d(in_rank, out_rank, kernel_size, stride, padding=padding,
                                       input_size=input_size)
        self.bn2 = BatchNormAct2d(out_rank, act, **bn)
        self.conv_pwl = create_conv2d(out_rank, out_channels, 1, padding=padding)
        self.bn3 = BatchNormAct2d(out_channels, None, **bn)
        self._init_residual(in_channels, out_channels, stride, skip, drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn1(self.conv_pw(x))
        x = self.bn2(self.conv_core(x))
        x = self.bn3(self.conv_pwl(x))
        return self._add_shortcut(x, shortcut)
