"""Box-aware detection transforms: letterbox resize + pad (eval), random scale jitter + crop +
flip (train). Each returns the scale it used, so detections map back to the original image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from effml.errors import InputError

Fill = int | Sequence[int] | str


class DetectionInput(NamedTuple):
    """One image with its boxes, before a transform: boxes xyxy float in the image's pixels."""

    image: Image.Image | torch.Tensor  # PIL RGB or uint8 [3, H, W]
    boxes: torch.Tensor  # [M, 4] float32
    labels: torch.Tensor  # [M] int64


class DetectionOutput(NamedTuple):
    """A transformed sample: ``boxes / scale`` are original pixels (eval; train adds a crop offset)."""

    image: torch.Tensor  # float32 [3, S, S], normalised
    boxes: torch.Tensor  # [M, 4] float32 xyxy in the transformed image's pixels
    labels: torch.Tensor  # [M] int64
    scale: float  # transformed pixels per original pixel


class DetectionTransform:
    """``(image, boxes, labels) -> DetectionOutput``: resize the long side to ``image_size * s``,
    crop/pad to ``image_size`` square (pad bottom/right), maybe flip, normalise.

    ``scale_range=(1, 1)``, ``hflip=0`` and ``random_crop=False`` is the eval letterbox. Takes one
    argument (a tuple) so that ``AugmentedDataset._augment`` can run it under the sample's seed.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float],
                 scale_range: tuple[float, float] = (1.0, 1.0), hflip: float = 0.0,
                 random_crop: bool = False, fill: Fill = 0) -> None:
        if image_size < 1:
            raise InputError(f"detection image_size must be a positive number of pixels, got {image_size}")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise InputError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        if not 0.0 <= hflip <= 1.0:
            raise InputError(f"hflip is a probability in [0, 1], got {hflip}")
        self.image_size = image_size
        self.mean, self.std = list(mean), list(std)
        self.scale_range = (float(lo), float(hi))
        self.hflip = hflip
        self.random_crop = random_crop
        self.fill = _fill_value(fill, self.mean)
        self._sanitize = v2.SanitizeBoundingBoxes(min_size=1.0)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(image_size={self.image_size}, scale_range={self.scale_range}, "
                f"hflip={self.hflip}, random_crop={self.random_crop}, fill={self.fill})")

    def __call__(self, sample: tuple) -> DetectionOutput:
        image, boxes, labels = sample
        if isinstance(image, Image.Image):
            image = F.pil_to_tensor(image)
        h, w = image.shape[-2:]
        size = self.image_size
        lo, hi = self.scale_range
        s = lo if lo == hi else lo + (hi - lo) * float(torch.rand(()))
        scale = size * s / max(h, w)
        # Round the resized size up (less a float hair, so the long side is exactly size): then a
        # box that fits the original image still fits the resized one and is never clipped.
        nh, nw = max(1, math.ceil(h * scale - 1e-6)), max(1, math.ceil(w * scale - 1e-6))
        if (nh, nw) != (h, w):
            image = F.resize(image, [nh, nw], antialias=True)
        # Boxes scale by the exact float ``scale`` (not by the rounded nh/h, nw/w), so that
        # ``boxes / scale`` recovers the original coordinates exactly; effdet's ResizePad does the
        # same. The < 1 px rounding of the image size is below annotation noise.
        bb = tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale,
                                      format="XYXY", canvas_size=(nh, nw))
        top = left = 0
        if self.random_crop:  # automl/effdet: a random window of the jittered image (effdet ``RandomResizePad``)
            top = int(torch.randint(0, max(nh - size, 0) + 1, ()))
            left = int(torch.randint(0, max(nw - size, 0) + 1, ()))
        ch, cw = min(size, nh - top), min(size, nw - left)
        image, bb = image[:, top:top + ch, left:left + cw], F.crop(bb, top, left, ch, cw)  # crop clamps
        # Flip before padding so that the pad stays bottom/right in every sample.
        if self.hflip > 0 and float(torch.rand(())) < self.hflip:
            image, bb = F.horizontal_flip(image), F.horizontal_flip(bb)
        if (ch, cw) != (size, size):
            padding = [0, 0, size - cw, size - ch]
            image, bb = F.pad(image, padding, fill=self.fill), F.pad(bb, padding)
        labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if self.random_crop or self.scale_range != (1.0, 1.0):
            # A crop can cut a box down to a sliver or away entirely; torchvision drops those
            # (and their labels). The eval letterbox keeps every box.
            kept = self._sanitize({"boxes": bb, "labels": labels})
            bb, labels = kept["boxes"], kept["labels"]
        pixels = F.to_dtype(image, torch.float32, scale=True)
        pixels = F.normalize(pixels, self.mean, self.std)
        return DetectionOutput(pixels, bb.as_subclass(torch.Tensor).contiguous(), labels, scale)


def detection_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                             fill: Fill = 0) -> DetectionTransform:
    """Letterbox: resize the long side to ``image_size`` keeping aspect, pad bottom/right (effdet ``ResizePad``)."""
    return DetectionTransform(image_size, mean, std, fill=fill)


def detection_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                              scale_range: tuple[float, float] = (0.1, 2.0), hflip: float = 0.5,
                              fill: Fill = 0) -> DetectionTransform:
    """Random scale jitter (long side = ``image_size * U(scale_range)``), random ``image_size``
    square crop (padded bottom/right when smaller), horizontal flip; the effdet/automl recipe
    (google/automl ``hparams_config.py``; effdet ``data/transforms.py``)."""
    return DetectionTransform(image_size, mean, std, scale_range=scale_range, hflip=hflip,
                              random_crop=True, fill=fill)


def _fill_value(fill: Fill, mean: Sequence[float]) -> list[int]:
    # Padding happens on uint8 pixels before normalising. automl pads its normalised image with
    # 0 (the mean colour); effdet fills (0, 0, 0) by default and its author trained with
    # ``--fill-color mean`` (effdet README): "mean" gives that.
    if isinstance(fill, str):
        if fill != "mean":
            raise InputError(f"fill must be a pixel value 0..255, three of them, or 'mean'; got {fill!r}")
        return [round(m * 255) for m in mean]
    values = [int(fill)] * 3 if isinstance(fill, (int, float)) else [int(v) for v in fill]
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise InputError(f"fill must be a pixel value 0..255, three of them, or 'mean'; got {fill!r}")
    return values
