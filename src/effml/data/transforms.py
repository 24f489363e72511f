"""Eval preprocessing (resize, center crop, normalise) and robust image loading."""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import InterpolationMode, v2

from effml.errors import InputError
from effml.files import os_error_reason
from effml.spec.entry import Preprocess

_INTERPOLATION = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}
INTERPOLATIONS = tuple(_INTERPOLATION)  # the names a ``Preprocess.interpolation`` may take


def eval_transform(preprocess: Preprocess, input_size: int | None = None) -> v2.Compose:
    """PIL image or uint8 CHW tensor -> normalised CHW float tensor: resize the shorter side to
    size/crop_pct with the preprocessing's interpolation, center crop.

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
        v2.ToPureTensor(),
    ])


MAX_PIXELS_ENV = "EFFML_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000: about 200 MB decoded as RGB


def max_image_pixels() -> int:
    """The largest image (width x height) effml decodes: ``$EFFML_MAX_IMAGE_PIXELS`` or 64 megapixels."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if value is None or not value.strip():
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(value))
    except ValueError:
        limit = 0
    if limit < 1:
        raise InputError(f"{MAX_PIXELS_ENV}={value!r} is not a positive number of pixels; set it to e.g. "
                         f"{DEFAULT_MAX_PIXELS} (the default, {DEFAULT_MAX_PIXELS // 1_000_000} megapixels) "
                         f"or unset it")
    return limit


def _too_big(path: Path, size: str, limit: int) -> InputError:
    return InputError(f"image {path} is {size}, over effml's limit of "
                      f"{limit / 1e6:g} megapixels, which keeps a huge or malicious file from taking "
                      f"gigabytes of memory; downscale it, or raise the limit with "
                      f"the environment variable {MAX_PIXELS_ENV}=<pixels>")


def load_image(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Read an image file as 8-bit RGB (grayscale, 16-bit, palette, CMYK; alpha over white).

    Raises ``InputError`` naming the file when it is missing, unreadable (permissions, I/O), not
    an image, truncated, or larger than ``max_pixels`` (width x height; default
    ``max_image_pixels()``: ``$EFFML_MAX_IMAGE_PIXELS`` or 64 megapixels). The size is checked from
    the file's header, before anything is decoded.
    """
    path = Path(path)
    limit = max_pixels if max_pixels is not None else max_image_pixels()
    try:
        if not path.exists():
            raise InputError(f"image {path} does not exist")
        if not path.is_file():
            raise InputError(f"image {path} is not a file")
    except OSError as e:  # e.g. a folder on the path that may not be searched
        raise _read_error(e, path) from None
    # PIL refuses (error) or warns about (warning) images over its own limits when it opens them;
    # effml's limit (checked below, with a message that says what to do) replaces both. PIL's
    # is raised only when the user raised effml's above it.
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img_file = Image.open(path)
        with img_file as img:
            width, height = img.size
            if width * height > limit:
                raise _too_big(path, f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels)", limit)
            img.load()  # decode now: a truncated file fails here, not later in the transform
            img = ImageOps.exif_transpose(img) or img  # camera rotation, as viewers show it
            return _to_rgb(img)
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image PIL can read (unknown or corrupt format)") from None
    except Image.DecompressionBombError as e:  # over twice PIL's limit: refused before we see the size
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.1f} megapixels" if found else "larger than PIL allows"
        raise _too_big(path, size, limit) from None
    except OSError as e:
        if e.errno is not None:  # the file system's error (permission, I/O), not a decoding one
            raise _read_error(e, path) from None
        raise InputError(f"cannot read image {path}: {e}") from None
    except (SyntaxError, ValueError, MemoryError) as e:
        raise InputError(f"cannot read image {path}: {e or type(e).__name__}") from None


def _read_error(e: OSError, path: Path) -> InputError:
    cause, _ = os_error_reason(e, path)
    return InputError(f"cannot read image {path}: {cause}; check the file and its permissions")


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
