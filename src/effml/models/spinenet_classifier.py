"""SpineNet for image classification (Du et al., CVPR 2020; its ImageNet experiments):
the SpineNet backbone's P3-P7 endpoints, pooled and classified.

Registered as ``spinenet{49,96,143,190}_cls`` (224 px, 1000 classes), the models of the paper's
classification runs (tensorflow/tpu ``configs/spinenet/spinenet*_classification.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from effml.errors import SpecError
from effml.models.spinenet import SpineNet, SpineNetSpec, spinenet_spec
from effml.spec.composite import ComposedSpec
from effml.spec.entry import ModelEntry, Preprocess


@dataclass(frozen=True)
class SpineNetClassifierSpec(ComposedSpec):
    """SpineNet + a pooled classifier: the endpoints are averaged over levels, globally pooled,
    dropped out and classified."""

    backbone: SpineNetSpec = field(default_factory=spinenet_spec)
    num_classes: int = 1000
    resolution: int = 224
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.num_classes < 0:
            raise SpecError(f"SpineNet classifier: num_classes must be >= 0, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise SpecError(f"SpineNet classifier: dropout must be in [0, 1), got {self.dropout}")


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


def spinenet_classifier_spec(model_id: str = "49", num_classes: int = 1000, resolution: int = 224,
                             **backbone: Any) -> SpineNetClassifierSpec:
    """SpineNet-``model_id`` with the pooled classifier (ImageNet: 224 px, 1000 classes)."""
    return SpineNetClassifierSpec(spinenet_spec(model_id, **backbone), num_classes, resolution)


# ImageNet models of the paper's classification experiments (tensorflow/tpu
# configs/spinenet/spinenet{49,96,143,190}_classification.yaml).
CLASSIFIER_IDS = ("49", "96", "143", "190")


# The zoo entries of this family, collected by effml.zoo.
ENTRIES = tuple(
    ModelEntry(
        name=f"spinenet{model_id.lower()}_cls", family="spinenet",
        spec_fn=partial(spinenet_classifier_spec, model_id),
        preprocess=Preprocess(224, 0.875), task="classify",
    )
    for model_id in CLASSIFIER_IDS
)

