"""Exponential moving average of weights and BN statistics, on torch's ``AveragedModel``."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_avg_fn(decay: float):
    """TF ``ExponentialMovingAverage(decay, num_updates)``: decay warms up as (1 + n) / (10 + n)."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():  # e.g. num_batches_tracked: follow the model
            return current
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return averaged * d + current * (1 - d)

    return avg


def create_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (parameters and buffers, as TF averages BN moving statistics)."""
    return AveragedModel(model, avg_fn=ema_avg_fn(decay), use_buffers=True)
