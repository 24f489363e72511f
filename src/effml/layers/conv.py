"""The one place that picks a convolution: plain, TF 'SAME', or MixConv."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from effml.layers.mixconv import MixConv2d
from effml.layers.padding import Conv2dSame, is_static_same, symmetric_padding
from effml.spec.channels import split_channels


def create_conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int | Sequence[int],
    stride: int = 1,
    *,
    depthwise: bool = False,
    padding: str = "",
    input_size: tuple[int, int] | None = None,
    bias: bool = False,
) -> nn.Module:
    """A conv of the requested padding flavour; a list of several kernels makes a ``MixConv2d``.

    ``input_size`` (when known) lets TF 'SAME' convs precompute their padding.
    """
    kernels = [kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
    if len(kernels) > 1:
        in_splits = split_channels(in_channels, len(kernels))
        out_splits = split_channels(out_channels, len(kernels))
        convs = [
            _single_conv(i, o, k, stride, i if depthwise else 1, padding, input_size, bias)
            for k, i, o in zip(kernels, in_splits, out_splits)
        ]
        return MixConv2d(convs, in_splits)
    groups = in_channels if depthwise else 1
    return _single_conv(in_channels, out_channels, kernels[0], stride, groups, padding, input_size, bias)


def _single_conv(
    in_ch: int, out_ch: int, k: int, stride: int, groups: int,
    padding: str, input_size: tuple[int, int] | None, bias: bool,
) -> nn.Module:
    if padding == "same" and not is_static_same(k, stride):
        return Conv2dSame(in_ch, out_ch, k, stride, groups=groups, bias=bias, input_size=input_size)
    pad = (k - 1) // 2 if padding == "same" else symmetric_padding(k, stride)
    return nn.Conv2d(in_ch, out_ch, k, stride, padding=pad, groups=groups, bias=bias)
