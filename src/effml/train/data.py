"""Data sets and loaders from the config: deterministic order, resumable mid-epoch, sharded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from effml.data.coco import CocoDetection, collate_detection
from effml.data.datasets import (
    AugmentedDataset,
    DigitsDataset,
    FashionMNISTDataset,
    FolderDataset,
    IndexSubset,
    check_readable,
    collate_samples,
    train_transform,
)
from effml.data.det_transforms import (
    detection_eval_transform,
    detection_train_transform,
)
from effml.data.fashion_mnist import FASHION_MNIST_ROOT
from effml.data.shapes import make_shapes_dataset
from effml.data.transforms import eval_transform
from effml.errors import InputError
from effml.spec.entry import Preprocess
from effml.train.config import Config


@dataclass
class DataBundle:
    """The data sets and what the model needs to know about them."""

    train: AugmentedDataset
    val: AugmentedDataset
    classes: tuple[str, ...]
    # data.holdout > 0: training images kept out of training and read with the eval transform,
    # for search rewards (the validation set stays untouched for the final report); for detection
    # a CocoDetection whose ground truth is the training annotations of its images only
    holdout: AugmentedDataset | None = None


DETECTION_DATASETS = ("shapes", "coco")


# Class counts this process has read, by the data they describe: a search names its space's
# classes and checks them against the proxy's (two calls) without reading the data set twice.
_CLASS_COUNTS: dict[str, int] = {}


def num_classes(cfg: Config) -> int:
    """The classifier width ``cfg`` trains: ``model.num_classes``, else the data set's class count
    (read once per process for the same data; a folder data set again when its folder changed)."""
    if cfg.model.num_classes:
        return cfg.model.num_classes
    train = Path(cfg.data.root) / "train" if cfg.data.root else None
    changed = train.stat().st_mtime_ns if train is not None and train.is_dir() else None
    key = repr((cfg.data, cfg.detect, changed))
    if key not in _CLASS_COUNTS:
        _CLASS_COUNTS[key] = len(build_datasets(cfg, Preprocess(cfg.data.image_size, 0.875)).classes)
    return _CLASS_COUNTS[key]


def eval_preprocess(cfg: Config, preprocess: Preprocess) -> Preprocess:
    """The preprocessing a run evaluates with, and records in ``run.json``: the model's at
    ``data.image_size``; images other than natural ones (``data.dataset=folder``) are taken whole,
    bilinear, as the embedded sets and the detection letterbox make them."""
    if cfg.data.dataset == "folder":
        return replace(preprocess, input_size=cfg.data.image_size)
    return replace(preprocess, input_size=cfg.data.image_size, crop_pct=1.0, interpolation="bilinear")


def build_datasets(cfg: Config, preprocess: Preprocess) -> DataBundle:
    """Train and val data sets of ``cfg.data``, normalised as the model's weights expect."""
    d = cfg.data
    if d.dataset in DETECTION_DATASETS:
        return _detection_datasets(cfg, preprocess)
    mean, std = preprocess.mean, preprocess.std
    natural = d.dataset == "folder"
    train_tf = train_transform(d.augment, d.image_size, mean, std, natural_images=natural,
                               ra_ops=d.randaugment_ops, ra_magnitude=d.randaugment_magnitude,
                               hflip=d.dataset == "fashion_mnist")
    val_tf = eval_transform(eval_preprocess(cfg, preprocess))
    seed = cfg.train.seed
    if d.dataset == "digits":
        def train_split(tf: Callable) -> AugmentedDataset:
            return DigitsDataset("train", d.image_size, tf, seed, limit=d.limit_train)

        train = train_split(train_tf)
        val = DigitsDataset("val", d.image_size, val_tf, seed, limit=d.limit_val)
    elif d.dataset == "fashion_mnist":
        fashion_root = Path(d.root) if d.root else FASHION_MNIST_ROOT

        def train_split(tf: Callable) -> AugmentedDataset:
            return FashionMNISTDataset("train", fashion_root, tf, seed, limit=d.limit_train)

        train = train_split(train_tf)
        val = FashionMNISTDataset("val", fashion_root, val_tf, seed, limit=d.limit_val)
    else:
        if not d.root:
            raise InputError("data.dataset=folder needs data.root: a folder with train/ and val/ inside")
        root = Path(d.root)

        def train_split(tf: Callable) -> AugmentedDataset:
            return FolderDataset(root / "train", tf, seed, d.on_corrupt, limit=d.limit_train)

        train = train_split(train_tf)
        if len(train.classes) < 2:
            raise InputError(f"dataset folder {root / 'train'} has a single class folder "
                             f"({train.classes[0]!r}): a classifier needs at least two classes, one "
                             f"sub-folder of images each; add the other classes' folders")
        val = FolderDataset(root / "val", val_tf, seed, d.on_corrupt, limit=d.limit_val)
    if val.classes != train.classes:
        raise InputError(f"{d.root}/val has classes {list(val.classes)[:5]}... but {d.root}/train has "
                         f"{list(train.classes)[:5]}...; both need the same class folders")
    holdout = None
    if d.holdout:
        keep, held = holdout_split(len(train), d.holdout, seed)
        train, holdout = IndexSubset(train, keep), IndexSubset(train_split(val_tf), held)
    return _bundle(train, val, d.batch_size, holdout)


def shuffled_order(n: int, seed: int) -> list[int]:
    """0..n-1 in an order fixed by ``seed``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def take_images(dataset: Any, count: int, seed: int | None = None) -> list[torch.Tensor]:
    """Up to ``count`` images of an effml data set (samples ``(image, target, ...)``; None =
    unreadable, skipped): in order, or in an order shuffled by ``seed``."""
    n = len(dataset)
    order = range(n) if seed is None else shuffled_order(n, seed)
    images: list[torch.Tensor] = []
    for i in order:
        if len(images) == count:
            break
        sample = dataset[i]
        if sample is not None:
            images.append(sample[0])
    return images


def holdout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) indices of a training set of ``n`` images: a ``fraction`` drawn at
    random, fixed by ``seed``, each list in ascending order."""
    count = round(n * fraction)
    if not 0 < count < n:
        raise InputError(f"data.holdout={fraction} of {n} training images leaves {count} held out and "
                         f"{n - count} to train on; choose a fraction that keeps both non-empty")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[count:]), sorted(order[:count])


def _bundle(train: AugmentedDataset, val: AugmentedDataset, batch_size: int,
            holdout: AugmentedDataset | None = None) -> DataBundle:
    if len(val) == 0:
        source = getattr(val, "annotation_file", None) or getattr(val, "root", None)
        raise InputError(f"the validation set{f' ({source})' if source else ''} has no images; add some "
                         f"(an empty set would report a meaningless score)")
    # Fail at once, not after an epoch of skipped batches, when (nearly) no image decodes (and before
    # the batch size is compared with images that could never be read).
    check_readable(train, "training set")
    if len(train) < batch_size:
        held = f" (after holding out {len(holdout)} for data.holdout)" if holdout is not None else ""
        raise InputError(f"the training set has {len(train)} images{held}, fewer than data.batch_size="
                         f"{batch_size}; lower the batch size")
    check_readable(val, "validation set")
    return DataBundle(train, val, train.classes, holdout)


def _detection_datasets(cfg: Config, preprocess: Preprocess) -> DataBundle:
    d, det = cfg.data, cfg.detect
    if d.limit_val:
        raise InputError("data.limit_val is not supported for detection data sets (COCO evaluation scores "
                         "every image of the annotation file); set data.limit_val=null")
    fill = 0 if det.fill == "black" else "mean"
    train_tf = detection_train_transform(d.image_size, preprocess.mean, preprocess.std, det.scale_range,
                                         det.hflip, fill)
    val_tf = detection_eval_transform(d.image_size, preprocess.mean, preprocess.std, fill)
    if d.dataset == "shapes":
        root = make_shapes_dataset(Path(d.root) if d.root else None, det.shapes_train, det.shapes_val,
                                   det.shapes_size, seed=0, num_classes=det.shapes_classes)
        splits = [(root / s, root / s / "annotations.json") for s in ("train", "val")]
    else:
        if not d.root:
            raise InputError("data.dataset=coco needs data.root: a folder with <split>/ images and "
                             "<split>/annotations.json (or annotations/instances_<split>.json)")
        splits = [_coco_split(Path(d.root), s) for s in (d.train_split, d.val_split)]
    on_missing = "skip" if d.on_corrupt == "skip" else "error"
    seed = cfg.train.seed
    train = CocoDetection(*splits[0], train_tf, seed, on_missing, limit=d.limit_train)
    val = CocoDetection(*splits[1], val_tf, seed, on_missing)
    if val.category_ids != train.category_ids:
        raise InputError(f"{val.annotation_file} has category ids {list(val.category_ids)[:10]} but "
                         f"{train.annotation_file} has {list(train.category_ids)[:10]}; both need the same")
    holdout = None
    if d.holdout:
        # The held-out images are a data set of their own (eval transform), whose COCO ground
        # truth is the training annotations restricted to their image ids: AP is computed on them alone.
        keep, held = holdout_split(len(train), d.holdout, seed)
        train, holdout = train.subset(keep), train.subset(held, transform=val_tf)
        if holdout.num_boxes() == 0:
            raise InputError(f"data.holdout={d.holdout} holds out {len(holdout)} training images of "
                             f"{train.annotation_file} with no boxes among them: AP would be undefined; "
                             f"raise data.holdout (or use more training images)")
    return _bundle(train, val, d.batch_size, holdout)


def _coco_split(root: Path, split: str) -> tuple[Path, Path]:
    images = root / split
    candidates = [images / "annotations.json", root / "annotations" / f"instances_{split}.json"]
    for ann in candidates:
        if ann.is_file():
            return images, ann
    raise InputError(f"no annotation file for split {split!r} under {root}: looked for "
                     f"{' and '.join(str(c) for c in candidates)}")


def collate_batch(samples: list) -> tuple:
    """(images, labels or per-image target dicts, indices, number skipped) for either task."""
    if samples and samples[0] is not None and isinstance(samples[0][1], dict):
        images, targets, indices = collate_detection(samples)
        return images, targets, indices, 0
    return collate_samples(samples)


def epoch_indices(dataset: AugmentedDataset, epoch: int, seed: int, rank: int, world: int) -> list[int]:
    """This process's shard of the epoch's shuffled order (the same on every run and resume)."""
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def train_loader(dataset: AugmentedDataset, indices: list[int], batch_size: int, workers: int,
                 pin_memory: bool = False) -> DataLoader:
    """Batches over ``indices`` in order; the last partial batch is dropped. ``pin_memory`` for a
    CUDA training (asked by the caller: CUDA is never queried for a CPU one)."""
    # Its own generator: creating a loader must not draw from the global RNG, whose state a
    # checkpoint restores mid-epoch (dropout and mixup read it).
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, drop_last=True,
                      num_workers=workers, collate_fn=collate_batch, generator=torch.Generator(),
                      persistent_workers=False, pin_memory=pin_memory)


def eval_loader(dataset: AugmentedDataset, batch_size: int, workers: int, rank: int, world: int) -> DataLoader:
    """This process's exact (unpadded) shard of the validation set."""
    indices = list(range(rank, len(dataset), world))
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers,
                      collate_fn=collate_batch, generator=torch.Generator())


def run_eval_loader(cfg: Config, dataset: AugmentedDataset) -> DataLoader:
    """One process's evaluation batches of ``dataset`` as a finished run is evaluated (`effml eval`,
    an exported supernet child's run.json): ``data.eval_batch_size`` (else the batch size)."""
    return eval_loader(dataset, cfg.data.eval_batch_size or cfg.data.batch_size, cfg.data.workers, 0, 1)

