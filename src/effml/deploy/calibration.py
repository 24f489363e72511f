"""Images for int8 calibration and for the int8-vs-fp32 check, prepared as the model expects.

Three sources, one rule: the images are read with the model's evaluation transform (a classifier's
resize + centre crop, a detector's letterbox), shuffled by a fixed seed and split into two disjoint
sets: calibration images and held-out images for the agreement check.
- a folder of images (searched recursively): the user's own data, the right choice;
- a run directory: its training images calibrate and its validation images check, both read as in
  its evaluation;
- ``embedded``: the embedded digits (classifiers) or shapes (detectors) at the model's size.
  ImageNet models calibrated on them will disagree with fp32: a smoke test, not a deployment.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from effml.data.transforms import load_image
from effml.errors import InputError
from effml.spec.entry import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
EMBEDDED = "embedded"
# Fewer calibration images than this get a warning (activation ranges from a handful of images
# rarely cover the data; TFLite's and ONNX Runtime's examples calibrate on 100 or more).
MIN_CALIBRATION = 32


@dataclass(frozen=True)
class CalibrationSet:
    """Disjoint calibration and held-out images ([N, C, H, W]) and where they came from."""

    calibration: torch.Tensor
    holdout: torch.Tensor
    source: str


def image_transform(preprocess: Preprocess, task: str) -> Callable[[object], torch.Tensor]:
    """PIL image -> the normalised tensor the model is evaluated on (classifier or detector)."""
    if task == "detect":
        from effml.data.det_transforms import detection_eval_transform

        letterbox = detection_eval_transform(preprocess.input_size, preprocess.mean, preprocess.std)
        empty = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
        return lambda picture: letterbox((picture, *empty)).image
    from effml.data.transforms import eval_transform

    return eval_transform(preprocess)


def split(images: Sequence[torch.Tensor], holdout: int, source: str, calibration: int | None = None) -> CalibrationSet:
    """The first ``holdout`` images held out, the rest for calibration (both non-empty). With fewer
    images than ``calibration + holdout``, calibration keeps at least half of them (9 photos asked
    as 128 + 128: 5 calibrate, 4 check), and fewer than ``MIN_CALIBRATION`` calibration images warn."""
    n = len(images)
    if n < 2:
        raise InputError(f"{source} gave {n} usable image(s); int8 calibration and its check "
                         f"need at least 2 (some 100 or more to be meaningful)")
    calibration = n - holdout if calibration is None else calibration
    held = holdout if n >= holdout + calibration else min(holdout, max(n - calibration, n // 2))
    held = min(max(held, 1), n - 1)
    return pair(images[held:], images[:held], source)


def pair(calibration: Sequence[torch.Tensor], holdout: Sequence[torch.Tensor], source: str) -> CalibrationSet:
    """Calibration and held-out images as one set; fewer than ``MIN_CALIBRATION`` calibration
    images warn."""
    if not len(calibration) or not len(holdout):
        raise InputError(f"{source} gave {len(calibration)} calibration and {len(holdout)} held-out image(s); "
                         f"int8 needs both (some 100 or more of each to be meaningful)")
    if len(calibration) < MIN_CALIBRATION:
        warnings.warn(f"{source}: only {len(calibration)} image(s) calibrate the int8 ranges and {len(holdout)} "
                      f"check them; ranges from fewer than {MIN_CALIBRATION} images may miss what the model will "
                      f"see, so give a folder of {MIN_CALIBRATION * 4} or more", stacklevel=3)
    return CalibrationSet(torch.stack(list(calibration)), torch.stack(list(holdout)), source)


def folder_images(folder: str | Path, preprocess: Preprocess, task: str, *, calibration: int,
                  holdout: int, seed: int = 0) -> CalibrationSet:
    """Images under ``folder`` (recursively), shuffled by ``seed``: ``holdout`` held out, up to
    ``calibration`` for calibration. Unreadable files are refused by name."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"calibration folder {root} does not exist or is not a folder; give a folder "
                         f"of images like those the model will see")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"calibration folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    transform = image_transform(preprocess, task)
    from effml.train.data import shuffled_order

    chosen = [files[i] for i in shuffled_order(len(files), seed)[:calibration + holdout]]
    return split([transform(load_image(p)) for p in chosen], holdout, f"{root} ({len(files)} images)", calibration)


def dataset_images(dataset: Dataset, *, calibration: int, holdout: int, source: str,
                   seed: int = 0) -> CalibrationSet:
    """Images of an effml data set, split into calibration and held-out images."""
    from effml.train.data import take_images

    return split(take_images(dataset, calibration + holdout, seed), holdout, source, calibration)


def run_images(run_dir: str | Path, preprocess: Preprocess, *, calibration: int, holdout: int,
               seed: int = 0) -> CalibrationSet:
    """A run's own images, as its evaluation reads them: training images calibrate (the data the
    model was fitted to, never the images it is scored on), validation images check, so that
    ``effml eval RUN --onnx`` then scores the int8 model on images its calibration never saw."""
    from effml.train.data import build_datasets, take_images
    from effml.train.run_dir import read_run_config

    cfg = read_run_config(run_dir)
    # data.holdout gives training images under the evaluation transform (no augmentation)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, holdout=0.5))
    bundle = build_datasets(cfg, preprocess)
    training = bundle.holdout if bundle.holdout is not None else bundle.train
    return pair(take_images(training, calibration, seed), take_images(bundle.val, holdout, seed),
                f"run {run_dir} (training images calibrate, validation images check)")


def embedded_images(preprocess: Preprocess, task: str, *, calibration: int, holdout: int,
                    seed: int = 0) -> CalibrationSet:
    """The embedded digits (classifiers) or shapes (detectors) validation images at the model's size."""
    from effml.train.config import load_config
    from effml.train.data import build_datasets

    dataset = "shapes" if task == "detect" else "digits"
    cfg = load_config(None, [f"data.dataset={dataset}", f"data.image_size={preprocess.input_size}"])
    bundle = build_datasets(cfg, preprocess)
    return dataset_images(bundle.val, calibration=calibration, holdout=holdout,
                          source=f"the embedded {dataset} images", seed=seed)
