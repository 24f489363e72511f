"""What every detector network shares, so that each family writes only its own parts.

A detector's spec is composed (a backbone spec plus neck/head settings, ``effml.spec.ComposedSpec``).
``Detector`` gives the network its class count,
class-head replacement and, for anchor-grid detectors, ``anchors(h, w)`` from ``spec.anchors``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from effml.detection.anchors import generate_anchors
from effml.detection.box_coder import BoxCoder


class Detector(nn.Module):
    """Base of detector networks: ``spec.num_classes``, a ``class_net`` built by ``_class_head``,
    anchors from ``spec.anchors`` (an ``AnchorSpec``; SSD-style detectors override ``anchors``)."""

    classifier_prefixes = ("class_net.predict.",)  # what drop_classifier / reset_head replace
    box_coder = BoxCoder()  # Faster R-CNN coder without scale factors (automl faster_rcnn_box_coder.py)
    spec: Any
    class_net: nn.Module

    def _class_head(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of object classes the class head predicts (sigmoid scores, no background slot)."""
        return self.spec.num_classes

    def reset_head(self, num_classes: int) -> None:
        """A freshly initialised class head for ``num_classes`` (fine-tuning on another label set)."""
        self.spec = self.spec.replace(num_classes=num_classes)
        device = next(self.parameters()).device
        self.class_net = self._class_head(num_classes).to(device)

    def anchors(self, height: int, width: int) -> torch.Tensor:
        """The ``[N, 4]`` xyxy anchors of an input of this size, in the heads' output order."""
        return generate_anchors(self.spec.anchors, (height, width))
