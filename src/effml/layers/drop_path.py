"""Stochastic depth (the TF code's "drop_connect"), per sample, on the residual branch only."""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Zero whole samples with probability ``rate`` and rescale survivors by 1 / (1 - rate)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
    """The linear schedule: block i of n drops with ``rate * i / n`` (TF ``survival_prob``)."""
    return [rate * i / num_blocks for i in range(num_blocks)]


class DropPath(nn.Module):
    """Module form of ``drop_path`` with a fixed rate."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"
