"""Detection recipe pieces for the one engine: the focal + Huber objective on labelled anchors,
and COCO mAP evaluation of a loader (google/automl ``tf2/train_lib.py``, ``tf2/postprocess.py``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from effml.detection.coco_eval import evaluate_detections
from effml.detection.losses import DetectionLoss
from effml.detection.predictor import DetectionPredictor
from effml.detection.targets import AnchorLabeler
from effml.train.objective import Batch, StepOutput


class DetectionObjective:
    """Label anchors from each image's boxes, then focal class loss + weighted Huber box loss."""

    def __init__(self, model: nn.Module, image_size: int, device: torch.device, *, alpha: float = 0.25,
                 gamma: float = 1.5, delta: float = 0.1, box_loss_weight: float = 50.0,
                 label_smoothing: float = 0.0, match_threshold: float = 0.5) -> None:
        anchors = model.anchors(image_size, image_size).to(device)
        self.labeler = AnchorLabeler(anchors, model.num_classes, match_threshold, match_threshold,
                                     coder=model.box_coder)
        self.loss = DetectionLoss(model.num_classes, alpha, gamma, delta, box_loss_weight, label_smoothing)

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        return self.loss_of(model(batch.images), batch.targets)

    def loss_of(self, outputs: tuple[list[torch.Tensor], list[torch.Tensor]], targets: list[dict]) -> StepOutput:
        """The loss of a detector's ``(class_outputs, box_outputs)`` for the images of ``targets``
        (a supernet child's outputs, say)."""
        cls_out, box_out = outputs
        cls_t, box_t, num_pos = self.labeler.label_batch([t["boxes"] for t in targets],
                                                         [t["labels"] for t in targets])
        total, cls_loss, box_loss = self.loss(cls_out, box_out, cls_t, box_t, num_pos)
        return StepOutput(total, cls_out[0], {"cls_loss": cls_loss.detach(), "box_loss": box_loss.detach()})


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    """Move each target's boxes and labels to ``device``."""
    return [{**t, "boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]


@torch.no_grad()
def evaluate_detection(model: nn.Module, batches: Iterable, device: torch.device, dataset: Any, *,
                       channels_last: bool = False, backend: str = "pycocotools",
                       **predictor_kwargs: Any) -> dict[str, float]:
    """COCO AP/AR (percent) of ``model`` over ``batches`` of a ``CocoDetection`` ``dataset``;
    under DDP each process predicts its shard and every process gets the same numbers."""
    was_training = model.training
    model.eval()
    predictor = DetectionPredictor(model, **predictor_kwargs)
    found = []
    for images, targets, *_ in batches:
        if len(images) == 0:
            continue
        images = images.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        found += detect_batch(predictor, images, targets)
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        shards: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, found)
        found = [d for shard in shards for d in shard]
    metrics = evaluate_detections(dataset.coco_gt(), found, dataset.category_ids, backend=backend)
    metrics["count"] = len(found)
    return metrics


def detect_batch(predictor: DetectionPredictor, images: torch.Tensor, targets: list[dict]) -> list[tuple]:
    """Per image of a letterboxed batch: (image id, boxes in the original image's pixels, scores,
    labels), as ``evaluate_detections`` takes them."""
    # clip to the letterboxed image, not its padding, then back to original pixels
    sizes = [(t["orig_size"][0] * t["scale"], t["orig_size"][1] * t["scale"]) for t in targets]
    return [(t["image_id"], (det.boxes / t["scale"]).cpu(), det.scores.cpu(), det.labels.cpu())
            for det, t in zip(predictor(images, sizes), targets)]
