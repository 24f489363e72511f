"""Top-1 / top-5 accuracy and loss of a classifier over a loader (sharded under DDP)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device,
             channels_last: bool = False, network: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> dict[str, float]:
    """{'top1', 'top5', 'loss', 'count'} over ``batches`` of (images, labels, ...); summed over
    processes when ``torch.distributed`` is initialised (each process sees its own shard).
    ``network``: what computes the logits instead of ``model`` (an exported model's runner)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss, count
    for images, labels, *_ in batches:
        if len(labels) == 0:
            continue
        images, labels = images.to(device), labels.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = (network or model)(images).float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == labels[:, None]
        totals += torch.stack([hit[:, 0].sum(), hit.any(1).sum(),
                               F.cross_entropy(logits, labels, reduction="sum"),
                               torch.tensor(len(labels), device=device)]).double()
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    top1, top5, loss, count = totals.tolist()
    n = max(count, 1.0)
    return {"top1": 100 * top1 / n, "top5": 100 * top5 / n, "loss": loss / n, "count": int(count)}
