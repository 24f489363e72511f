"""Anchor labelling: per-anchor class and box-regression targets from ground-truth boxes.

Class targets per anchor: a 0-based class index (positive), ``-1`` (background) or ``-2``
(ignored: left out of the class loss). Box targets are coder deltas on positives and 0 elsewhere.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou

from effml.detection.box_coder import BoxCoder
from effml.errors import SpecError

BACKGROUND = -1
IGNORE = -2


class AnchorLabeler:
    """Assigns each anchor a class and a box target by IoU arg-max matching.

    The matcher is the reference ``ArgMaxMatcher`` (google/automl ``argmax_matcher.py``): each anchor takes
    its highest-IoU ground truth; IoU >= ``match_threshold`` -> positive, < ``unmatched_threshold``
    -> background, in between -> ignored; with ``force_match`` every ground truth also claims its
    best anchor, so small or odd-shaped objects still get a positive. EfficientDet uses 0.5/0.5
    (no ignore band) with force_match; SSD the same (3.3).
    """

    def __init__(
        self,
        anchors: torch.Tensor,
        num_classes: int,
        match_threshold: float = 0.5,
        unmatched_threshold: float = 0.5,
        force_match: bool = True,
        coder: BoxCoder = BoxCoder(),
    ) -> None:
        if anchors.dim() != 2 or anchors.shape[-1] != 4:
            raise SpecError(f"AnchorLabeler: anchors must be [N, 4] xyxy, got shape {tuple(anchors.shape)}")
        if num_classes < 1:
            raise SpecError(f"AnchorLabeler: num_classes must be >= 1, got {num_classes}")
        if unmatched_threshold > match_threshold:
            raise SpecError(
                f"AnchorLabeler: unmatched_threshold ({unmatched_threshold}) must be <= match_threshold "
                f"({match_threshold}); IoUs between them are ignored")
        self.anchors = anchors
        self.num_classes = num_classes
        self.match_threshold = match_threshold
        self.unmatched_threshold = unmatched_threshold
        self.force_match = force_match
        self.coder = coder

    def label(self, boxes: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Targets of one image: class ``[N]`` long, box ``[N, 4]``, and the positive count (0-dim float).

        ``boxes`` are ``[M, 4]`` xyxy in input pixels, ``labels`` ``[M]`` 0-based class indices;
        rows with a negative label are padding and are dropped (as effdet's ``filter_valid``).
        """
        anchors = self.anchors
        num_anchors = anchors.shape[0]
        boxes = boxes.to(device=anchors.device, dtype=anchors.dtype).reshape(-1, 4)
        labels = labels.to(device=anchors.device, dtype=torch.long).reshape(-1)
        if boxes.shape[0] != labels.shape[0]:
            raise SpecError(f"AnchorLabeler.label: {boxes.shape[0]} boxes but {labels.shape[0]} labels")
        valid = labels >= 0
        if not bool(valid.all()):
            boxes, labels = boxes[valid], labels[valid]
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise SpecError(
                f"AnchorLabeler.label: class index {int(labels.max())} >= num_classes {self.num_classes}; "
                "labels must be 0-based (COCO ids 1..90 need num_classes=91 or a remap)")

        if boxes.shape[0] == 0:  # an image without objects: every anchor is background
            return (torch.full((num_anchors,), BACKGROUND, dtype=torch.long, device=anchors.device),
                    anchors.new_zeros(num_anchors, 4), anchors.new_zeros(()))

        # Zero-area boxes give 0/0 in IoU; the reference defines that IoU as 0.
        iou = box_iou(boxes, anchors).nan_to_num_(0.0)  # [M, N]
        best_iou, matches = iou.max(dim=0)  # per anchor; ties -> lowest GT index, as TF argmax
        positive = best_iou >= self.match_threshold
        background = best_iou < self.unmatched_threshold
        if self.force_match:
            # Each GT claims its best anchor; when several GTs claim the same anchor the lowest GT
            # index wins (TF argmax over the one-hot indicator returns the first maximum).
            best_anchor = iou.argmax(dim=1)  # [M]
            num_gt = boxes.shape[0]
            claimed_by = torch.full((num_anchors,), num_gt, dtype=torch.long, device=anchors.device)
            claimed_by.scatter_reduce_(0, best_anchor, torch.arange(num_gt, device=anchors.device), reduce="amin")
            forced = claimed_by < num_gt
            matches = torch.where(forced, claimed_by, matches)
            positive = positive | forced
            background = background & ~forced

        cls_targets = torch.where(background, BACKGROUND, IGNORE)
        cls_targets = torch.where(positive, labels[matches], cls_targets)
        deltas = self.coder.encode(boxes[matches], anchors)
        box_targets = torch.where(positive.unsqueeze(-1), deltas, torch.zeros_like(deltas))
        return cls_targets, box_targets, positive.sum().to(anchors.dtype)

    def label_batch(
        self, boxes: list[torch.Tensor], labels: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Targets of a batch: class ``[B, N]``, box ``[B, N, 4]``, positives ``[B]`` (float)."""
        if len(boxes) != len(labels):
            raise SpecError(f"AnchorLabeler.label_batch: {len(boxes)} box lists but {len(labels)} label lists")
        if not boxes:
            raise SpecError("AnchorLabeler.label_batch: empty batch")
        cls, box, num_pos = zip(*(self.label(b, c) for b, c in zip(boxes, labels)))
        return torch.stack(cls), torch.stack(box), torch.stack(num_pos)
