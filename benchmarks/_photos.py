"""Real photos that ship with Python packages (scikit-image, scikit-learn, matplotlib samples)
and random crops of them: an offline stand-in for ImageNet validation images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat")


def sample_photos() -> list[Image.Image]:
    """Eight colour photos: five from scikit-image, two from scikit-learn, one from matplotlib."""
    import matplotlib
    import sklearn.datasets
    from skimage import data

    photos = [Image.fromarray(getattr(data, n)()[..., :3]) for n in SKIMAGE_PHOTOS]
    photos += [Image.open(f).convert("RGB") for f in sklearn.datasets.load_sample_images().filenames]
    photos.append(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    return photos


def photo_crops(transform, per_photo: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each photo and ``per_photo - 1`` random crops of it (35-100% of the area, half mirrored),
    through ``transform``; alternate crops go to the first (calibration) and the second (held-out)
    set, so both see every photo but never the same crop."""
    rng = np.random.default_rng(seed)
    calibration, holdout = [], []
    for photo in sample_photos():
        w, h = photo.size
        crops = [photo]
        for _ in range(per_photo - 1):
            s = np.sqrt(rng.uniform(0.35, 1.0))
            cw, ch = int(w * s), int(h * s)
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = photo.crop((x0, y0, x0 + cw, y0 + ch))
            crops.append(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
        tensors = [transform(c) for c in crops]
        calibration += tensors[1::2]
        holdout += tensors[0::2]
    return torch.stack(calibration), torch.stack(holdout)
