"""The embedded default data set: scikit-learn's 1,797 real handwritten digits (8x8, 10 classes),
upsampled to RGB images, with a fixed train/val split. Nothing is downloaded."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

DIGITS_CLASSES = tuple(str(i) for i in range(10))
VAL_FRACTION = 0.2
SPLIT_SEED = 0  # the split is part of the data set's definition: never change it


@lru_cache(maxsize=4)
def load_digits_split(image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, val images, val labels); images uint8 [N, 3, S, S] (cached:
    treat them as read-only).

    Stratified fixed split: 20% of each class, chosen with a fixed seed, is validation.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8]
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target.astype(np.int64))
    rng = np.random.RandomState(SPLIT_SEED)
    val = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(digits.target == c)
        val[rng.choice(idx, size=round(len(idx) * VAL_FRACTION), replace=False)] = True
    val_t = torch.from_numpy(val)
    return images[~val_t], labels[~val_t], images[val_t], labels[val_t]
