"""What a zoo entry declares besides its spec: the preprocessing its weights expect.

Families (models/, detection/) declare their entries as data with these records; the zoo
collects them. They live here, below every family, so that any family can use them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite TF checkpoints take (x - 127) / 128 on 0..255 pixels (tensorflow/tpu
# models/official/efficientnet/lite/README.md).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# AdvProp checkpoints take [-1, 1] inputs (tensorflow/tpu efficientnet/eval_ckpt_main.py:
# x * 2 / 255 - 1; Xie et al., arXiv 1911.09665).
ADVPROP_MEAN = (0.5,) * 3
ADVPROP_STD = (0.5,) * 3


@dataclass(frozen=True)
class Preprocess:
    """How images must be prepared for a model's weights (eval transform)."""

    input_size: int
    crop_pct: float
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"


def tf_crop_pct(size: int) -> float:
    """Crop fraction of the TF eval pipeline, size / (size + CROP_PADDING=32)
    (tensorflow/tpu efficientnet/preprocessing.py)."""
    return size / (size + 32)


@dataclass(frozen=True)
class ModelEntry:
    """A zoo model: its name, family, spec function, preprocessing and task.

    ``task`` is "classify" or "detect"; it matches the task of the spec's kind.
    """

    name: str
    family: str
    spec_fn: Callable[[], Any]
    preprocess: Preprocess
    task: str = "classify"

    def spec(self) -> Any:
        """The spec of this model (``NetworkSpec`` or a composite spec)."""
        return self.spec_fn()
