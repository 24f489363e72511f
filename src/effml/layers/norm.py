"""BatchNorm fused with its activation, keeping the flat state_dict keys of a plain BatchNorm2d."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effml.layers.activations import create_act


class BatchNormAct2d(nn.BatchNorm2d):
    """``BatchNorm2d`` then an activation (``act=None`` for none); keys as ``nn.BatchNorm2d``."""

    def __init__(
        self, num_features: int, act: str | None = None, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.act = create_act(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = super().forward(x)
        else:  # inference: straight to the kernel, skipping nn.BatchNorm2d's bookkeeping
            x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                             False, 0.0, self.eps)
        return self.act(x)
