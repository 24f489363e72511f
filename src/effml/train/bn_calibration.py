"""Re-estimating BatchNorm statistics for fixed weights (BN recalibration).

A BatchNorm's running statistics are an exponential average over training steps whose weights kept
changing, so at the end of a short run (or for a network whose weights were averaged, sliced or
swapped) they describe networks that no longer exist. Recalibration resets them and takes the
plain cumulative average (``momentum=None``) over a few batches run through the final weights, as
BigNAS (arXiv 2003.11142, section 3.3) does for every child before evaluating it. Only the
statistics change: no gradient is taken, weights and every other buffer stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorms(model: nn.Module, frozen: nn.Module | None = None) -> list[_BatchNorm]:
    """The BatchNorms of ``model`` that keep running statistics, less those inside ``frozen``."""
    skip = {id(m) for m in frozen.modules()} if frozen is not None else set()
    return [m for m in model.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and id(m) not in skip]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], *,
                   frozen: nn.Module | None = None) -> int:
    """Replace the running mean and variance of ``model``'s BatchNorms (but those in ``frozen``,
    e.g. a pretrained backbone whose statistics training kept) by their average over ``batches``.

    The rest of the network runs in eval mode (no dropout or drop path); the model is left in eval
    mode. Returns the number of batches used; with none, the statistics are left untouched.
    """
    batches = list(batches)
    if not batches:
        return 0
    norms = batchnorms(model, frozen)
    model.eval()
    momenta = [m.momentum for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches, not an exponential one
            m.train()
        for images in batches:
            model(images)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return len(batches)
