"""Weight initialisers of the TF reference code, shared by every family."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def _fans(w: torch.Tensor, groups: int) -> tuple[int, int]:
    receptive = w[0][0].numel() if w.dim() > 2 else 1
    return w.size(1) * receptive, w.size(0) * receptive // groups


def variance_scaling_(w: torch.Tensor, groups: int = 1) -> None:
    """TF variance_scaling(1.0, 'fan_in', normal) as effdet approximates it (untruncated normal)."""
    fan_in, _ = _fans(w, groups)
    nn.init.normal_(w, std=math.sqrt(1.0 / max(1.0, fan_in)))


def glorot_uniform_(w: torch.Tensor, groups: int = 1) -> None:
    """TF glorot_uniform, the default initialiser of the BiFPN's convs."""
    fan_in, fan_out = _fans(w, groups)
    limit = math.sqrt(3.0 / max(1.0, (fan_in + fan_out) / 2))
    nn.init.uniform_(w, -limit, limit)


def init_convs_(module: nn.Module, weight_init: Callable[[torch.Tensor, int], None]) -> None:
    """Every conv: ``weight_init(weight, groups)``, zero bias; every BN: weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            weight_init(m.weight, m.groups)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_weights_tf(module: nn.Module) -> None:
    """The EfficientNet initialisers of the TF reference (``efficientnet_model.conv_kernel_initializer``
    / ``dense_kernel_initializer``): conv normal(0, sqrt(2 / fan_out)) with fan_out per group,
    dense uniform(+-1/sqrt(out)), BN gamma 1 beta 0. Meta-device tensors (no values) are skipped."""
    for m in module.modules():
        if getattr(m, "weight", None) is not None and m.weight.is_meta:
            continue  # shape-only model (FLOP counting, planning): initialising is a slow no-op
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = 1.0 / math.sqrt(m.weight.shape[0])
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
