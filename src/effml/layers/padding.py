"""TF 'SAME' padding: static when the input size is known, dynamic otherwise.

TF pads ``max((ceil(i/s) - 1) * s + (k - 1) * d + 1 - i, 0)`` in total, the smaller half before
(timm ``layers/padding.py::get_same_padding``). For stride 2 on an even size that is asymmetric, which
PyTorch's symmetric ``padding`` cannot express; ported TF weights lose accuracy without it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

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


# The zero-tap path below computes TF 'SAME' exactly, on a kernel one tap larger: a MAC counter
# would count the zeros. ``tf_same_as_written()`` selects the explicit pad for counting.
_ZERO_TAP = contextvars.ContextVar("effml_same_zero_tap", default=True)


@contextlib.contextmanager
def tf_same_as_written() -> Iterator[None]:
    """Within the block, ``Conv2dSame`` pads explicitly and convolves with its own kernel: the
    network's MACs are the paper's (``count_macs``), not those of a faster equivalent kernel."""
    token = _ZERO_TAP.set(False)
    try:
        yield
    finally:
        _ZERO_TAP.reset(token)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TF 'SAME' padding; pads are precomputed for ``input_size`` and recomputed otherwise.

    Three ways to run it, all computing the same function:
    - symmetric pads: the convolution's own padding (no copy);
    - asymmetric pads on a depthwise conv: TF puts the odd pixel after, so pads ``(p, p + 1)``
      equal a symmetric ``p + 1`` with one zero tap in front of the kernel. PyTorch's CPU depthwise
      kernels are 2-8x slower on the odd-sized input an explicit pad makes (measured per layer,
      EfficientNet-B0 at 224 px), and one more tap costs little on a depthwise kernel;
    - asymmetric pads on a dense conv: ``F.pad`` then the conv (a larger dense kernel costs more
      than the copy: 3x3 -> 4x4 is 1.8x the MACs).
    """

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

    def _is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels and self.dilation == (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = (x.shape[-2], x.shape[-1])
        pads = self._static_pads if hw == self._static_hw else self._pads_for(hw)
        left, right, top, bottom = pads
        if left == right and top == bottom:  # symmetric: let the conv pad, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        if self._is_depthwise() and _ZERO_TAP.get():  # (p, p + 1) == zero tap in front + symmetric p + 1
            weight = _zero_tap_first(self.weight, bottom > top, right > left)
            return F.conv2d(x, weight, self.bias, self.stride, (bottom, right), self.dilation, self.groups)
        x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _zero_tap_first(weight: torch.Tensor, rows: bool, cols: bool) -> torch.Tensor:
    """The kernel with a row and/or a column of zeros in front (a concatenation: the ONNX
    exporter writes an invalid graph for ``F.pad`` of a parameter)."""
    if rows:
        weight = torch.cat([weight.new_zeros(*weight.shape[:2], 1, weight.shape[3]), weight], dim=2)
    if cols:
        weight = torch.cat([weight.new_zeros(*weight.shape[:3], 1), weight], dim=3)
    return weight


class MaxPool2dSame(nn.MaxPool2d):
    """Max pooling with TF 'SAME' padding: padding never wins the max.

    Pads ``(p, p)`` are the pool's own (-inf) padding and ``(p, p + 1)`` that plus ``ceil_mode``,
    whose last window may run one pixel past the end: no copy of the input. Sizes where PyTorch's
    pooling rules give another output size (a 2-pixel input to a 3x3 pool) take an explicit pad
    that repeats the edge pixels: every 'SAME' window holds the edge pixel a padded one repeats, so
    the max is unchanged, and unlike a -inf pad the exported graph holds only finite values (int8
    calibration by percentile or entropy builds histograms of every activation).
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__(kernel_size, stride, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_pad_1d(x.shape[-2], self.kernel_size, self.stride)
        left, right = same_pad_1d(x.shape[-1], self.kernel_size, self.stride)
        if top == left and bottom - top == right - left:
            ceil = bottom > top
            if all(_pool_size(n, self.kernel_size, self.stride, top, ceil) == same_output_size(n, self.stride)
                   for n in x.shape[-2:]):
                return F.max_pool2d(x, self.kernel_size, self.stride, top, ceil_mode=ceil)
        x = F.pad(x, (left, right, top, bottom), mode="replicate")
        return F.max_pool2d(x, self.kernel_size, self.stride)


def _pool_size(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int | None:
    """PyTorch's max-pool output size, or None where it refuses the padding (aten Pool.h)."""
    if 2 * pad > kernel or size + 2 * pad < kernel:
        return None
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad:  # the last window must start inside
        out -= 1
    return out


def create_max_pool2d(kernel_size: int, stride: int, padding: str = "") -> nn.Module:
    """Max pooling in the padding flavour of the network (TF 'SAME' or PyTorch symmetric)."""
    if padding == "same":
        return MaxPool2dSame(kernel_size, stride)
    return nn.MaxPool2d(kernel_size, stride, padding=symmetric_padding(kernel_size, stride))
