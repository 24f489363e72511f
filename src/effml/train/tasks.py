"""What differs between training a classifier and a detector, behind one small interface, so that
``engine.fit`` stays one loop: the network, moving targets, the default objective, evaluation,
and how a spec and the metrics are written."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from effml.errors import EffmlError
from effml.spec.entry import Preprocess
from effml.zoo import create_model, resolve_spec, spec_to_json, task_of
from effml.train.config import Config
from effml.train.evaluate import evaluate
from effml.train.objective import CrossEntropyObjective, Objective


class ClassificationTask:
    """Image classification: EfficientNet-family networks, cross-entropy, top-1/top-5."""

    name = "classify"

    def build_model(self, spec: Any) -> nn.Module:
        """The network of ``spec``."""
        return create_model(spec)

    def targets_to(self, targets: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Labels on ``device``."""
        return targets.to(device)

    def mixer(self, cfg: Config, num_classes: int) -> v2.Transform | None:
        """Mixup / CutMix of a batch, if configured."""
        d = cfg.data
        mixers = []
        if d.mixup > 0:
            mixers.append(v2.MixUp(alpha=d.mixup, num_classes=num_classes))
        if d.cutmix > 0:
            mixers.append(v2.CutMix(alpha=d.cutmix, num_classes=num_classes))
        if not mixers:
            return None
        return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def objective(self, cfg: Config, net: nn.Module, spec: Any, preprocess: Preprocess,
                  num_train: int, device: torch.device) -> Objective:
        """Cross-entropy, AdvProp or distillation, as the config says."""
        num_classes = spec.num_classes
        if cfg.advprop.enabled and cfg.distill.teacher:
            raise EffmlError("advprop.enabled and distill.teacher cannot be combined yet; choose one")
        if cfg.advprop.enabled and cfg.train.sync_bn:
            raise EffmlError("advprop.enabled with train.sync_bn is not supported yet (the auxiliary "
                             "BatchNorms have no synchronised form); set train.sync_bn=false")
        if cfg.advprop.enabled:
            from effml.train.advprop import AdvPropObjective, PGDAttacker

            a = cfg.advprop
            attacker = PGDAttacker(epsilon=a.epsilon, step_size=a.step_size, steps=a.steps)
            return AdvPropObjective(attacker, preprocess.mean, preprocess.std, cfg.train.label_smoothing)
        if cfg.distill.teacher:
            from effml.train.distill import DistillationObjective, TeacherLogitCache
            from effml.train.resolve import resolve_model

            d = cfg.distill
            resolved = resolve_model(d.teacher, weights=d.teacher_weights)
            teacher = resolved.build(resolve_spec(resolved.spec, num_classes=num_classes)).to(device)
            cache = TeacherLogitCache(num_train, num_classes) if d.cache else None
            return DistillationObjective(teacher, temperature=d.temperature, alpha=d.alpha,
                                         label_smoothing=cfg.train.label_smoothing, cache=cache)
        return CrossEntropyObjective(cfg.train.label_smoothing)

    def evaluate(self, cfg: Config, model: nn.Module, batches: Any, device: torch.device,
                 dataset: Any, network: Any = None) -> dict[str, float]:
        """Top-1 / top-5 / loss over the validation batches (``network``: an exported model's runner
        computes the logits instead of ``model``)."""
        return evaluate(model, batches, device, cfg.train.channels_last, network=network)

    def describe(self, metrics: dict[str, float]) -> str:
        """One line of the main metrics."""
        return f"top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%"

    def spec_json(self, spec: Any) -> str:
        """The spec as written to ``model.json``."""
        return spec_to_json(spec)

    def run_info(self, dataset: Any) -> dict[str, Any]:
        """Task-specific fields of ``run.json``."""
        return {}


class DetectionTask:
    """Object detection: EfficientDet, focal + Huber loss on anchors, COCO mAP."""

    name = "detect"

    def build_model(self, spec: Any) -> nn.Module:
        """The detector of ``spec``."""
        return create_model(spec)

    def targets_to(self, targets: list[dict], device: torch.device) -> list[dict]:
        """Boxes and labels on ``device``."""
        from effml.train.detection import targets_to

        return targets_to(targets, device)

    def mixer(self, cfg: Config, num_classes: int) -> None:
        """Detection has no batch mixing; mixup/cutmix settings are refused."""
        if cfg.data.mixup or cfg.data.cutmix:
            raise EffmlError("data.mixup / data.cutmix apply to classification only; set them to 0")
        return None

    def objective(self, cfg: Config, net: nn.Module, spec: Any, preprocess: Preprocess,
                  num_train: int, device: torch.device) -> Objective:
        """Focal class loss + Huber box loss on labelled anchors (google/automl ``tf2/train_lib.py``)."""
        if cfg.advprop.enabled or cfg.distill.teacher:
            raise EffmlError("advprop and distill are classification recipes; turn them off for "
                             "detection models")
        from effml.train.detection import DetectionObjective

        d = cfg.detect
        from effml.train.distributed import unwrap

        return DetectionObjective(unwrap(net), cfg.data.image_size, device, alpha=d.focal_alpha, gamma=d.focal_gamma,
                                  delta=d.huber_delta, box_loss_weight=d.box_loss_weight,
                                  label_smoothing=d.label_smoothing, match_threshold=d.match_threshold)

    def evaluate(self, cfg: Config, model: nn.Module, batches: Any, device: torch.device,
                 dataset: Any, network: Any = None) -> dict[str, float]:
        """COCO AP / AR (percent) over the validation set (``network``: an exported model's runner
        computes the raw outputs; ``model``'s anchors and NMS post-process them)."""
        from effml.train.detection import evaluate_detection

        d = cfg.detect
        return evaluate_detection(model, batches, device, dataset, channels_last=cfg.train.channels_last,
                                  backend=d.eval_backend, max_candidates=d.max_candidates,
                                  iou_threshold=d.iou_threshold, max_detections=d.max_detections,
                                  soft_nms_sigma=d.soft_nms_sigma, network=network)

    def describe(self, metrics: dict[str, float]) -> str:
        """One line of the main metrics, in percent with one decimal as the papers print AP (33.8)."""
        return f"AP {metrics['AP']:.1f} AP50 {metrics['AP50']:.1f} AP75 {metrics['AP75']:.1f}"

    def spec_json(self, spec: Any) -> str:
        """The spec as written to ``model.json``."""
        return spec_to_json(spec)

    def run_info(self, dataset: Any) -> dict[str, Any]:
        """COCO category ids, so that detections map back to the annotation file's ids."""
        return {"category_ids": list(dataset.category_ids)}


def task_for(spec: Any) -> ClassificationTask | DetectionTask:
    """The task a spec trains for, from its kind (``effml.zoo.kinds``)."""
    return ClassificationTask() if task_of(spec) == "classify" else DetectionTask()
