"""SpineNet for image classification (Du et al., CVPR 2020; its ImageNet experiments):
the SpineNet backbone's P3-P7 endpoints, pooled and classified.

Registered as ``spinenet{49,96,143,190}_cls`` (224 px, 1000 classes), the models of the paper's
classification runs (tensorflow/tpu ``configs/spinenet/spinenet*_classification.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from effml.detection.detector import ComposedSpec
from effml.detection.spec import DetectorKind, check_keys, register_detector_kind
from effml.detection.spinenet import SpineNet, SpineNetSpec, spinenet_from_dict, spinenet_spec, spinenet_to_dict
from effml.errors import SpecError
from effml.models.registry import ModelEntry, Preprocess, register


@dataclass(frozen=True)
class SpineNetClassifierSpec(ComposedSpec):
    """SpineNet + a pooled classifier: the endpoints are averaged over levels, globally pooled,
    dropped out and classified."""

    backbone: SpineNetSpec = field(default_factory=spinenet_spec)
    num_classes: int = 1000
    image_size: int = 224
    dropout: float = 0.0
    task: ClassVar[str] = "classify"

    def __post_init__(self) -> None:
        if self.num_classes < 0:
            raise SpecError(f"SpineNet classifier: num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"SpineNet classifier: dropout must be in [0, 1), got {self.dropout}")

    def replace(self, **changes: Any) -> SpineNetClassifierSpec:
        """A copy with fields changed; ``bn_eps``/``bn_momentum`` go to the backbone."""
        bn = {k: changes.pop(k) for k in ("bn_eps", "bn_momentum") if k in changes}
        if bn:
            changes["backbone"] = changes.get("backbone", self.backbone).replace(**bn)
        return replace(self, **changes)


class SpineNetClassifier(nn.Module):
    """SpineNet endpoints -> mean over levels of their global average pools -> dropout -> linear.

    The reference head (tensorflow/tpu ``ClassificationHead``, aggregation 'all', used by the
    paper's ImageNet runs) upsamples every level to P<min>, sums, divides by the level count and
    pools; nearest upsampling by whole factors keeps each map's mean, so pooling each level
    first and averaging is the same number (exactly when the input is a multiple of
    2**max_level) at a fraction of the cost. Averaging, not concatenating, keeps the
    classifier width at ``endpoints_num_filters`` as in the reference.
    """

    classifier_prefixes = ("classifier.",)

    def __init__(self, spec: SpineNetClassifierSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = SpineNet(spec.backbone)
        self.num_features = spec.backbone.endpoints_num_filters
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = self._classifier(spec.num_classes)

    def _classifier(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        linear = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(linear.weight, std=0.01)  # reference: dense kernel N(0, 0.01)
        nn.init.zeros_(linear.bias)
        return linear

    @property
    def num_classes(self) -> int:
        """Number of output classes (0 when the classifier is removed)."""
        return self.spec.num_classes

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised classifier for ``num_classes``."""
        device = next(self.parameters()).device
        self.classifier = self._classifier(num_classes).to(device)
        self.spec = self.spec.replace(num_classes=num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled ``[B, endpoints_num_filters]`` feature vector."""
        maps = self.backbone(x)
        return torch.stack([m.mean((2, 3)) for m in maps]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))


def spinenet_classifier_spec(model_id: str = "49", num_classes: int = 1000, image_size: int = 224,
                             **backbone: Any) -> SpineNetClassifierSpec:
    """SpineNet-``model_id`` with the pooled classifier (ImageNet: 224 px, 1000 classes)."""
    return SpineNetClassifierSpec(spinenet_spec(model_id, **backbone), num_classes, image_size)


def classifier_to_dict(spec: SpineNetClassifierSpec) -> dict[str, Any]:
    """A JSON-ready dict of a SpineNet classifier spec."""
    return {"backbone": spinenet_to_dict(spec.backbone), "num_classes": spec.num_classes,
            "image_size": spec.image_size, "dropout": spec.dropout}


def classifier_from_dict(data: dict[str, Any]) -> SpineNetClassifierSpec:
    """Rebuild a SpineNet classifier spec from ``classifier_to_dict`` output."""
    data = dict(data)
    check_keys(data, SpineNetClassifierSpec, "SpineNet classifier")
    try:
        data["backbone"] = spinenet_from_dict(data["backbone"])
        return SpineNetClassifierSpec(**data)
    except (KeyError, TypeError) as e:
        raise SpecError(f"SpineNet classifier spec: missing or malformed field ({e})") from None


# ImageNet models of the paper's classification experiments (tensorflow/tpu
# configs/spinenet/spinenet{49,96,143,190}_classification.yaml).
CLASSIFIER_IDS = ("49", "96", "143", "190")


def _register_all() -> None:
    # The detector-kind registry is effml's spec type -> builder + JSON registry: create_model
    # builds any spec registered there. Training with the engine still needs it to pick the task
    # from ``spec.task`` (ClassificationTask builds NetworkSpecs only).
    register_detector_kind(DetectorKind("spinenet_classifier", SpineNetClassifierSpec, SpineNetClassifier,
                                        classifier_to_dict, classifier_from_dict))
    for model_id in CLASSIFIER_IDS:
        register(ModelEntry(
            name=f"spinenet{model_id.lower()}_cls", family="spinenet",
            spec_fn=partial(spinenet_classifier_spec, model_id),
            preprocess=Preprocess(224, 0.875), task="classify",
        ))


_register_all()

