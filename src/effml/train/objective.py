"""What one training step minimises: the engine hands an ``Objective`` a batch, it returns the loss.

Recipes (label smoothing, AdvProp, knowledge distillation) are objectives; the engine stays one
loop. Targets are class indices ``[N]`` or, after mixup/cutmix, class probabilities ``[N, C]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Batch:
    """One training batch: images, targets, and each sample's index in its dataset."""

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor


@dataclass
class StepOutput:
    """The loss to backpropagate, the clean-input logits (for metrics), and named loss parts
    (detached tensors; the engine reads them only when it logs, to avoid a device sync per step)."""

    loss: torch.Tensor
    logits: torch.Tensor
    parts: dict[str, torch.Tensor]


class Objective(Protocol):
    """Computes the training loss of ``model`` on ``batch`` (the model is in train mode)."""

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput: ...


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy for hard (index) or soft (probability) targets, with label smoothing."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


class CrossEntropyObjective:
    """The default recipe: cross-entropy with label smoothing (EfficientNet uses 0.1)."""

    def __init__(self, label_smoothing: float = 0.1) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        logits = model(batch.images)
        loss = classification_loss(logits, batch.targets, self.label_smoothing)
        return StepOutput(loss, logits, {"ce": loss.detach()})
