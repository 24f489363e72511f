"""Data: image loading, eval transforms, ImageNet class names, Fashion-MNIST from its IDX files."""

from effml.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, load_fashion_mnist
from effml.data.imagenet import NUM_IMAGENET_CLASSES, class_names, imagenet_classes
from effml.data.transforms import eval_transform, load_image

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_ROOT", "NUM_IMAGENET_CLASSES", "class_names", "eval_transform",
           "imagenet_classes", "load_fashion_mnist", "load_image"]
