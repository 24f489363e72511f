"""Detection on pictures: each picture letterboxed to the detector's input, the detector with its
anchors and NMS, and the boxes mapped back to the picture's pixels and clipped to it. This is what
``effml detect`` runs; in Python::

    run = load_run("runs/shapes")
    detector = ImageDetector(run.model, run.preprocess)
    found = detector([load_image("street.jpg")])      # found[0].boxes, .scores, .labels
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn

from effml.data.det_transforms import Fill, detection_eval_transform
from effml.detection.predictor import DetectionPredictor
from effml.spec.entry import Preprocess


@dataclass(frozen=True)
class PictureDetections:
    """One picture's detections: ``boxes`` [N, 4] xyxy in the picture's pixels, best first."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


class ImageDetector:
    """A detector over PIL pictures of any size (letterbox in, picture pixels out)."""

    def __init__(self, model: nn.Module, preprocess: Preprocess, *, fill: Fill = 0,
                 score_threshold: float | None = None, iou_threshold: float = 0.5, max_detections: int = 100,
                 network: Callable | None = None) -> None:
        self.transform = detection_eval_transform(preprocess.input_size, preprocess.mean, preprocess.std, fill)
        # ``network``: what computes the raw outputs instead of ``model`` (an ``OnnxRunner`` or
        # ``OpenVinoRunner`` on the exported network).
        self.predictor = DetectionPredictor(model, iou_threshold=iou_threshold, max_detections=max_detections,
                                            score_threshold=score_threshold, network=network).eval()

    def __call__(self, pictures: Sequence[Image.Image]) -> list[PictureDetections]:
        """Detections of each picture (one batch)."""
        if not pictures:
            return []
        images, scales = [], []
        for picture in pictures:
            out = self.transform((picture, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)))
            images.append(out.image)
            scales.append(out.scale)
        # Clip to the resized picture inside the letterbox, not to its padding.
        sizes = [(p.height * s, p.width * s) for p, s in zip(pictures, scales)]
        with torch.inference_mode():
            found = self.predictor(torch.stack(images), sizes)
        results = []
        for picture, scale, det in zip(pictures, scales, found):
            boxes = det.boxes.float() / scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, picture.width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, picture.height)
            results.append(PictureDetections(boxes, det.scores, det.labels))
        return results
