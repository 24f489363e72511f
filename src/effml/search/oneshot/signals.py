"""What a TuNAS step learns from, per task: the training loss of the step's child, and the quality
Q of a child on a window of held-out training images, which rewards the controller.

- classifiers: cross-entropy; Q is the window's top-1 (TuNAS, arXiv 2008.06120, section 3.3);
- detectors (MobileDets' search, arXiv 2004.14525: an SSDLite supernet): the detection objective's
  focal + Huber loss; Q is ``exp(-loss)`` of the window (``loss``, the default: the training
  objective, no post-processing) or the window's AP50 (``ap50``: COCO AP at IoU 0.5 of the window's
  images alone, a fraction). On a shapes supernet one window's exp(-loss) ranked children as their
  full held-out AP50 does at Kendall tau 0.50 against AP50's 0.40, at 14% less CPU
  (``benchmarks/detection_reward_signal.py``). MobileDets' search rewards with the detector's COCO
  mAP on held-out images [our reading; not verified against the paper's search section, which was
  not at hand here].

BatchNorm runs on the window's own statistics and leaves the shared running averages as they are
(``keep_buffers``, as ``TunasStep`` explains). A window is chosen by the number of rewards so far,
so a resumed search reads the same ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from effml.errors import SearchError
from effml.train.objective import Batch, StepOutput, classification_loss

if TYPE_CHECKING:
    from effml.train.trainer import Trainer

DETECTION_SIGNALS = ("ap50", "loss")


def read_held_out(trainer: Trainer) -> tuple[torch.Tensor, list[Any]]:
    """The held-out training images (eval transform) and their targets, batch by batch (a signal
    reads them once and keeps them)."""
    images, targets = [], []
    for x, t, *_ in trainer.eval_batches("holdout"):
        images.append(x)
        targets.append(t)
    return torch.cat(images), targets


def window(count: int, size: int, position: int) -> torch.Tensor:
    """Indices of held-out window ``position`` (the n-th reward): ``size`` images from ``count``,
    consecutive and wrapping around."""
    size = min(count, max(1, size))
    start = position * size % count
    return torch.arange(start, start + size) % count


class ClassificationSignal:
    """Cross-entropy for the step; top-1 of the window for the reward."""

    name = "top-1"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing
        self._holdout: tuple[torch.Tensor, torch.Tensor] | None = None

    def loss(self, trainer: Trainer, outputs: torch.Tensor, batch: Batch) -> StepOutput:
        loss = classification_loss(outputs, batch.targets, self.label_smoothing)
        return StepOutput(loss, outputs, {"ce": loss.detach()})

    def quality(self, trainer: Trainer, supernet: Any, spec: Any, size: int, position: int) -> float:
        x, y = self._held_out(trainer)
        index = window(len(x), size, position)
        with torch.no_grad():
            logits = supernet(x[index].to(trainer.device), child=spec, keep_buffers=True)
        return (logits.argmax(1).cpu() == y[index]).float().mean().item()

    def _held_out(self, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        if self._holdout is None:
            images, labels = read_held_out(trainer)
            self._holdout = images, torch.cat(labels)
        return self._holdout


class DetectionSignal:
    """The detection objective for the step; AP50 or exp(-loss) of the window for the reward."""

    def __init__(self, kind: str = "loss") -> None:
        if kind not in DETECTION_SIGNALS:
            raise SearchError(f"tunas.detection_signal={kind!r} is unknown; use one of {list(DETECTION_SIGNALS)}")
        self.kind = kind
        self.name = "AP50" if kind == "ap50" else "exp(-loss)"
        self._holdout: tuple[torch.Tensor, list[dict]] | None = None

    def loss(self, trainer: Trainer, outputs: Any, batch: Batch) -> StepOutput:
        return trainer.objective.loss_of(outputs, batch.targets)

    def quality(self, trainer: Trainer, supernet: Any, spec: Any, size: int, position: int) -> float:
        from effml.detection.coco_eval import coco_subset, evaluate_detections
        from effml.detection.predictor import DetectionPredictor
        from effml.train.detection import detect_batch, targets_to

        x, targets = self._held_out(trainer)
        index = window(len(x), size, position)
        images, chosen = x[index].to(trainer.device), [targets[i] for i in index.tolist()]
        with torch.no_grad():
            if self.kind == "loss":
                outputs = supernet(images, child=spec, keep_buffers=True)
                return math.exp(-float(trainer.objective.loss_of(outputs, targets_to(chosen, trainer.device)).loss))
            d = trainer.cfg.detect
            predictor = DetectionPredictor(supernet, max_candidates=d.max_candidates, iou_threshold=d.iou_threshold,
                                           max_detections=d.max_detections, soft_nms_sigma=d.soft_nms_sigma,
                                           network=lambda batch: supernet(batch, child=spec, keep_buffers=True))
            found = detect_batch(predictor, images, chosen)
        dataset = trainer.dataset("holdout")
        gt = coco_subset(dataset.coco_gt(), [t["image_id"] for t in chosen])
        ap50 = evaluate_detections(gt, found, dataset.category_ids, backend=d.eval_backend)["AP50"] / 100
        return 0.0 if math.isnan(ap50) else ap50

    def _held_out(self, trainer: Trainer) -> tuple[torch.Tensor, list[dict]]:
        if self._holdout is None:
            images, targets = read_held_out(trainer)
            self._holdout = images, [t for batch in targets for t in batch]
        return self._holdout
