"""Exponential moving average of weights and BN statistics, on torch's ``AveragedModel``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(decay: float, num_updates: int) -> float:
    """TF ``ExponentialMovingAverage(decay, num_updates)``: decay warms up as (1 + n) / (10 + n)."""
    return min(decay, (1 + num_updates) / (10 + num_updates))


def ema_multi_avg_fn(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """The EMA update of a list of same-device, same-dtype tensors in place, with multi-tensor ops."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        # AveragedModel groups tensors by dtype, so one check covers the list
        if not averaged[0].is_floating_point():  # e.g. num_batches_tracked: follow the model
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1 - ema_decay_at(decay, int(num_averaged)))

    return update


def create_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA copy of ``model`` (parameters and buffers, as TF averages BN moving statistics)."""
    return AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)
