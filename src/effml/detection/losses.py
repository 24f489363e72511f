"""Detection losses: sigmoid focal loss for classes, Huber for box deltas, normalised by positives.

Defaults are EfficientDet's (google/automl ``tf2/train_lib.py``); SSDLite's (alpha 0.75, gamma 2,
smooth-L1 = Huber with delta 1, box weight 1; TF ``ssdlite_mobiledet_*`` configs) are the same
loss with other constructor args.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effml.errors import SpecError


def flatten_outputs(outputs: list[torch.Tensor], channels_per_anchor: int) -> torch.Tensor:
    """Per-level head maps ``[B, A*K, H, W]`` (P<min> first) -> ``[B, N, K]`` in anchor order."""
    # Channels are anchor-major ([A, K] per location), so NHWC then a reshape lines up with
    # generate_anchors' (row, column, anchor) order (automl ``ClassNet``, effdet ``HeadNet``).
    batch = outputs[0].shape[0]
    return torch.cat([o.permute(0, 2, 3, 1).reshape(batch, -1, channels_per_anchor) for o in outputs], dim=1)


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets_onehot: torch.Tensor,
    alpha: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Elementwise sigmoid focal loss ``alpha_t * (1 - p_t)**gamma * BCE`` (no reduction)."""
    targets = targets_onehot.to(logits.dtype)
    prob = logits.sigmoid()
    # alpha_t and the modulator use the hard target; smoothing only softens the BCE target, so
    # the modulator cannot blow up the loss (automl tf2/train_lib.py FocalLoss).
    p_t = targets * prob + (1 - targets) * (1 - prob)
    alpha_t = targets * alpha + (1 - targets) * (1 - alpha)
    modulator = (1 - p_t) ** gamma
    if label_smoothing > 0:
        targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return alpha_t * modulator * bce


def huber_loss(input: torch.Tensor, target: torch.Tensor, delta: float) -> torch.Tensor:
    """Elementwise Huber loss: 0.5 x^2 for |x| <= delta, else delta (|x| - delta / 2)."""
    # Same as Keras' Huber that automl uses; with delta=1 it is SSD's smooth-L1.
    return F.huber_loss(input, target, reduction="none", delta=delta)


class DetectionLoss(nn.Module):
    """Focal class loss + weighted Huber box loss over all anchors, normalised by positives + 1.

    ``forward`` takes the raw per-level head outputs and the labeler's flat targets and returns
    ``(total, cls_loss, box_loss)`` with ``total = cls_loss + box_loss_weight * box_loss``.
    """

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.25,
        gamma: float = 1.5,
        delta: float = 0.1,
        box_loss_weight: float = 50.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise SpecError(f"DetectionLoss: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.alpha = alpha
        self.gamma = gamma
        self.delta = delta
        self.box_loss_weight = box_loss_weight
        self.label_smoothing = label_smoothing

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, gamma={self.gamma}, delta={self.delta}, "
                f"box_loss_weight={self.box_loss_weight}, label_smoothing={self.label_smoothing}")

    def forward(
        self,
        cls_outputs: list[torch.Tensor],
        box_outputs: list[torch.Tensor],
        cls_targets: torch.Tensor,
        box_targets: torch.Tensor,
        num_positives: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, class, box) losses of a batch; targets as ``AnchorLabeler.label_batch`` returns them."""
        # Losses in float32 even under autocast: the sums run over ~10^6 terms.
        cls_logits = flatten_outputs(cls_outputs, self.num_classes).float()
        box_preds = flatten_outputs(box_outputs, 4).float()
        if cls_logits.shape[:2] != cls_targets.shape or box_preds.shape != box_targets.shape:
            raise SpecError(
                f"DetectionLoss: outputs give {tuple(cls_logits.shape[:2])} (batch, anchors) but targets are "
                f"{tuple(cls_targets.shape)}; label with anchors from the same AnchorSpec and image size")
        # Sum over the batch, +1 so an all-background batch does not divide by zero (1.5).
        normalizer = num_positives.float().sum() + 1.0

        # Background (-1) and ignored (-2) get an all-zero one-hot; ignored anchors are then masked.
        positive = cls_targets >= 0
        onehot = F.one_hot(cls_targets.clamp(min=0), self.num_classes).to(cls_logits.dtype)
        onehot = onehot * positive.unsqueeze(-1)
        cls_elem = sigmoid_focal_loss(cls_logits, onehot, self.alpha, self.gamma, self.label_smoothing)
        cls_elem = cls_elem * (cls_targets != -2).unsqueeze(-1)
        cls_loss = cls_elem.sum() / normalizer

        # Only non-zero targets count: the labeler writes 0 on every non-positive anchor (1.5).
        box_mask = box_targets != 0
        box_elem = huber_loss(box_preds, box_targets.float(), self.delta) * box_mask
        box_loss = box_elem.sum() / (normalizer * 4.0)
        return cls_loss + self.box_loss_weight * box_loss, cls_loss, box_loss
