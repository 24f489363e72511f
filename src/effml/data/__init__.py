"""Data: image loading, eval transforms, ImageNet class names."""

from effml.data.imagenet import NUM_IMAGENET_CLASSES, class_names, imagenet_classes
from effml.data.transforms import eval_transform, load_image

__all__ = ["NUM_IMAGENET_CLASSES", "class_names", "eval_transform", "imagenet_classes", "load_image"]
