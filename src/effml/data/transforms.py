"""Eval preprocessing (resize, center crop, normalise) and robust image loading."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import InterpolationMode, v2

from effml.errors import InputError
from effml.spec.entry import Preprocess

_INTERPOLATION = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def eval_transform(preprocess: Preprocess, input_size: int | None = None) -> v2.Compose:
    """PIL image -> normalised CHW float tensor: resize shorter side to size/crop_pct, center crop.

    This is the TF/timm eval pipeline (tensorflow/tpu efficientnet ``preprocessing.py``); ``input_size``
    overrides the size the weights were evaluated at, keeping their crop fraction.
    """
    size = input_size or preprocess.input_size
    try:
        interpolation = _INTERPOLATION[preprocess.interpolation]
    except KeyError:
        raise InputError(f"interpolation {preprocess.interpolation!r} is unknown; "
                         f"use one of {sorted(_INTERPOLATION)}") from None
    scale_size = math.floor(size / preprocess.crop_pct)
    return v2.Compose([
        v2.Resize(scale_size, interpolation=interpolation, antialias=True),  # shorter side
        v2.CenterCrop(size),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(preprocess.mean), std=list(preprocess.std)),
    ])


def load_image(path: str | Path) -> Image.Image:
    """Read an image file as 8-bit RGB (grayscale, 16-bit, palette, CMYK; alpha over white).

    Raises ``InputError`` naming the file when it is missing, not an image, or truncated.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"image {path} does not exist")
    if not path.is_file():
        raise InputError(f"image {path} is not a file")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later in the transform
            img = ImageOps.exif_transpose(img) or img  # camera rotation, as viewers show it
            return _to_rgb(img)
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image PIL can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot read image {path}: {e}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        # 16-bit / 32-bit / float grayscale: convert("L") would clip at 255 instead of rescaling.
        arr = np.asarray(img, dtype=np.float64)
        peak = float(arr.max()) if arr.size else 0.0
        if img.mode == "F" and peak <= 1.0:
            arr = arr * 255.0
        elif peak > 255.0:
            arr = arr / 257.0  # 65535 -> 255
        img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img.copy()
