"""A detector with its anchors and post-processing: images in, per-image detections out.

The network stays pure (per-level raw outputs, what ONNX export takes); this wrapper adds what
effdet's ``DetBenchPredict`` adds: anchors for the input size (cached), decoding, clipping,
class-aware NMS and the detection cap (effdet ``bench.py``, ``anchors.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from effml.detection.box_coder import BoxCoder
from effml.detection.postprocess import Detections, postprocess


class DetectionPredictor(nn.Module):
    """Wrap a detector (see ``effml.detection.spec.DetectorKind`` for what it provides)."""

    def __init__(self, model: nn.Module, *, max_candidates: int = 5000, iou_threshold: float = 0.5,
                 max_detections: int = 100, score_threshold: float | None = None,
                 soft_nms_sigma: float | None = None, network: Callable | None = None) -> None:
        super().__init__()
        self.model = model
        # What computes the raw outputs: the model itself, or any callable with its input and
        # output structure (an ONNX Runtime session, ``effml.deploy.runtime.OnnxRunner``).
        self.network = network
        self.max_candidates = max_candidates
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.soft_nms_sigma = soft_nms_sigma
        self.coder: BoxCoder = model.box_coder
        self._anchors: dict[tuple, torch.Tensor] = {}

    def anchors(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The ``[N, 4]`` xyxy anchors of an input of this size (cached per size and device)."""
        key = (height, width, str(device))
        if key not in self._anchors:
            self._anchors[key] = self.model.anchors(height, width).to(device)
        return self._anchors[key]

    @torch.no_grad()
    def forward(self, images: torch.Tensor, image_sizes: list[tuple[int, int]] | None = None) -> list[Detections]:
        """Detections per image, boxes xyxy in input pixels clipped to ``image_sizes`` (h, w of
        the unpadded image inside the input; default the whole input)."""
        cls_out, box_out = (self.network or self.model)(images)
        h, w = images.shape[-2:]
        sizes = image_sizes if image_sizes is not None else [(h, w)] * images.shape[0]
        return postprocess(cls_out, box_out, self.anchors(h, w, images.device), self.model.num_classes,
                           image_sizes=sizes, max_candidates=self.max_candidates,
                           iou_threshold=self.iou_threshold, max_detections=self.max_detections,
                           score_threshold=self.score_threshold, soft_nms_sigma=self.soft_nms_sigma,
                           coder=self.coder)
