"""Squeeze-and-Excitation as EfficientNet uses it: on the expanded channels, block activation."""

from __future__ import annotations

import torch
from torch import nn

from effml.layers.activations import create_act


class SqueezeExcite(nn.Module):
    """Global mean -> 1x1 reduce (bias) -> act -> 1x1 expand (bias) -> gate -> scale the input.

    The reduced width is computed by the caller from the *block input* channels
    (TF ``num_reduced_filters = max(1, int(input_filters * se_ratio))``).
    """

    def __init__(self, channels: int, reduced: int, act: str = "swish", gate: str = "sigmoid") -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = create_act(act)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = create_act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act1(self.conv_reduce(s)))
        return x * self.gate(s)
