"""Parameter and multiply-accumulate counts of any module (also on the meta device)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from effml.layers.padding import tf_same_as_written


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def count_macs(model: nn.Module, input_size: int | Sequence[int], in_channels: int | None = None) -> int:
    """Multiply-accumulates of one forward pass on a batch of 1 (``FlopCounterMode`` flops / 2).

    Counts convolutions and matmuls (what papers count as FLOPs); works on meta-device models.
    """
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if in_channels is None:
        spec = getattr(model, "spec", None)
        in_channels = int(spec.in_channels) if spec is not None else _first_conv_channels(model)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    x = torch.empty(1, in_channels, *hw, device=device) if device.type == "meta" else \
        torch.zeros(1, in_channels, *hw, device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad(), tf_same_as_written():
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def _first_conv_channels(model: nn.Module) -> int:
    return next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
