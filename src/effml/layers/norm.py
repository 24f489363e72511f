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


class SyncBatchNormAct2d(nn.SyncBatchNorm):
    """``SyncBatchNorm`` (statistics over all DDP processes) then the activation of the BN it replaces."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.act: nn.Module = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNormAct2d`` with a ``SyncBatchNormAct2d`` holding the same state and
    activation (torch's own converter would drop the activation)."""
    if isinstance(module, BatchNormAct2d):
        sync = SyncBatchNormAct2d(module.num_features, module.eps, module.momentum)
        sync.load_state_dict(module.state_dict())
        sync.act = module.act
        sync.train(module.training)
        return sync.to(module.weight.device)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module
