"""Faster R-CNN box coder: xyxy boxes <-> ``[ty, tx, th, tw]`` deltas relative to anchors.

Boxes and anchors are xyxy (torchvision); the deltas keep the reference's yx order so that box
heads trained by google/automl and effdet load unchanged (automl ``faster_rcnn_box_coder.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from effml.errors import SpecError


def _centers_sizes(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y center, x center, height, width) of xyxy boxes ``[..., 4]``."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    h, w = y2 - y1, x2 - x1
    return y1 + h / 2, x1 + w / 2, h, w


@dataclass(frozen=True)
class BoxCoder:
    """Encodes boxes as anchor-relative deltas ``[ty, tx, th, tw]`` and decodes them back.

    ``scale_factors=None`` is EfficientDet's unscaled coder; ``(10, 10, 5, 5)`` is the SSD /
    TF Object Detection API one (``ssdlite_mobiledet_*`` configs). ``eps`` floors box and anchor
    sizes before the division and log, as automl's ``faster_rcnn_box_coder`` does.
    """

    scale_factors: tuple[float, float, float, float] | None = None
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.scale_factors is not None:
            factors = tuple(float(f) for f in self.scale_factors)
            if len(factors) != 4 or not all(f > 0 for f in factors):
                raise SpecError(
                    f"BoxCoder: scale_factors must be 4 positive numbers (ty, tx, th, tw), got {self.scale_factors!r}")
            object.__setattr__(self, "scale_factors", factors)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Deltas ``[..., 4]`` = ``[ty, tx, th, tw]`` of xyxy ``boxes`` w.r.t. xyxy ``anchors`` (broadcast)."""
        yc, xc, h, w = _centers_sizes(boxes)
        yca, xca, ha, wa = _centers_sizes(anchors)
        # A degenerate (zero-size) box or anchor would give inf/NaN; automl floors at EPSILON.
        ha, wa = ha.clamp(min=self.eps), wa.clamp(min=self.eps)
        h, w = h.clamp(min=self.eps), w.clamp(min=self.eps)
        deltas = torch.stack([(yc - yca) / ha, (xc - xca) / wa, torch.log(h / ha), torch.log(w / wa)], dim=-1)
        if self.scale_factors is not None:
            deltas = deltas * deltas.new_tensor(self.scale_factors)
        return deltas

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """xyxy boxes ``[..., 4]`` from ``[ty, tx, th, tw]`` deltas and xyxy ``anchors`` (broadcast)."""
        if self.scale_factors is not None:
            deltas = deltas / deltas.new_tensor(self.scale_factors)
        ty, tx, th, tw = deltas.unbind(-1)
        yca, xca, ha, wa = _centers_sizes(anchors)
        # No clamp on th/tw: the reference exponentiates the raw outputs, and parity with its
        # detections matters more than guarding an untrained head (automl ``faster_rcnn_box_coder.py``).
        h, w = torch.exp(th) * ha, torch.exp(tw) * wa
        yc, xc = ty * ha + yca, tx * wa + xca
        return torch.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], dim=-1)
