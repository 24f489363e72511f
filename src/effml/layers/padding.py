"""TF 'SAME' padding: static when the input size is known, dynamic otherwise.

TF pads ``max((ceil(i/s) - 1) * s + (k - 1) * d + 1 - i, 0)`` in total, the smaller half before
(timm ``layers/padding.py::get_same_padding``). For stride 2 on an even size that is asymmetric, which
PyTorch's symmetric ``padding`` cannot express; ported TF weights lose accuracy without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_pad_1d(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of one spatial dimension under TF 'SAME'."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def same_output_size(size: int, stride: int) -> int:
    """Output size of a TF 'SAME' conv: ceil(size / stride)."""
    return math.ceil(size / stride)


def symmetric_padding(kernel: int, stride: int = 1, dilation: int = 1) -> int:
    """PyTorch-style symmetric padding used by the non-TF flavour (timm ``get_padding``)."""
    return ((stride - 1) + dilation * (kernel - 1)) // 2


def is_static_same(kernel: int, stride: int, dilation: int = 1) -> bool:
    """True when TF 'SAME' equals a fixed symmetric padding for every input size."""
    return stride == 1 and (dilation * (kernel - 1)) % 2 == 0


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF 'SAME' padding; pads are precomputed for ``input_size`` and recomputed otherwise."""

    def __init__(self, *args, input_size: tuple[int, int] | None = None, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)
        self._static_hw: tuple[int, int] | None = None
        self._static_pads: tuple[int, int, int, int] = (0, 0, 0, 0)
        if input_size is not None:
            self._static_hw = (int(input_size[0]), int(input_size[1]))
            self._static_pads = self._pads_for(self._static_hw)

    def _pads_for(self, hw: tuple[int, int]) -> tuple[int, int, int, int]:
        top, bottom = same_pad_1d(hw[0], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_pad_1d(hw[1], self.kernel_size[1], self.stride[1], self.dilation[1])
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = (x.shape[-2], x.shape[-1])
        pads = self._static_pads if hw == self._static_hw else self._pads_for(hw)
        left, right, top, bottom = pads
        if left == right and top == bottom:  # symmetric: let the conv pad, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MaxPool2dSame(nn.MaxPool2d):
    """Max pooling with TF 'SAME' padding (pads with -inf, so padding never wins the max)."""

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__(kernel_size, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_pad_1d(x.shape[-2], self.kernel_size, self.stride)
        left, right = same_pad_1d(x.shape[-1], self.kernel_size, self.stride)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


def create_max_pool2d(kernel_size: int, stride: int, padding: str = "") -> nn.Module:
    """Max pooling in the padding flavour of the network (TF 'SAME' or PyTorch symmetric)."""
    if padding == "same":
        return MaxPool2dSame(kernel_size, stride)
    return nn.MaxPool2d(kernel_size, stride, padding=symmetric_padding(kernel_size, stride))
