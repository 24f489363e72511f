"""MixConv (Tan & Le, BMVC 2019): depthwise kernels of several sizes over channel groups."""

from __future__ import annotations

import torch
from torch import nn


class MixConv2d(nn.ModuleDict):
    """Split channels into groups, convolve each with its own kernel size, concatenate.

    With one kernel size per group and ``depthwise=False`` this is MixNet's grouped 1x1
    convolution (``a1.1`` / ``p1.1``): group i maps input split i to output split i.
    Submodules are keyed "0", "1", ... as in timm's ``MixedConv2d``, so state_dicts match.
    """

    def __init__(self, convs: list[nn.Module], in_splits: list[int]) -> None:
        super().__init__({str(i): conv for i, conv in enumerate(convs)})
        self.splits = list(in_splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, dim=1)
        return torch.cat([conv(p) for conv, p in zip(self.values(), parts)], dim=1)
