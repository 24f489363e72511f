"""The 1000 ImageNet-1k class names, from the copy torchvision ships (no download)."""

from __future__ import annotations

from functools import lru_cache

NUM_IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The ImageNet-1k class names in label-index order (torchvision's weight metadata)."""
    from torchvision.models import EfficientNet_B0_Weights

    names = tuple(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(names) == NUM_IMAGENET_CLASSES
    return names


def class_names(num_classes: int) -> tuple[str, ...] | None:
    """ImageNet names when a classifier has 1000 outputs, else None (labels are indices)."""
    return imagenet_classes() if num_classes == NUM_IMAGENET_CLASSES else None
