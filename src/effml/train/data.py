"""Data sets and loaders from the config: deterministic order, resumable mid-epoch, sharded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from effml.data.datasets import (
    AugmentedDataset, DigitsDataset, FolderDataset, collate_samples, eval_tensor_transform,
    train_transform,
)
from effml.errors import InputError
from effml.models.registry import Preprocess
from effml.train.config import Config


@dataclass
class DataBundle:
    """The two data sets and what the model needs to know about them."""

    train: AugmentedDataset
    val: AugmentedDataset
    classes: tuple[str, ...]


def build_datasets(cfg: Config, preprocess: Preprocess) -> DataBundle:
    """Train and val data sets of ``cfg.data``, normalised as the model's weights expect."""
    d = cfg.data
    mean, std = preprocess.mean, preprocess.std
    natural = d.dataset == "folder"
    train_tf = train_transform(d.augment, d.image_size, mean, std, natural_images=natural,
                               ra_ops=d.randaugment_ops, ra_magnitude=d.randaugment_magnitude)
    val_tf = eval_tensor_transform(d.image_size, mean, std, preprocess.crop_pct, natural_images=natural)
    seed = cfg.train.seed
    if d.dataset == "digits":
        train = DigitsDataset("train", d.image_size, train_tf, seed, limit=d.limit_train)
        val = DigitsDataset("val", d.image_size, val_tf, seed)
    else:
        if not d.root:
            raise InputError("data.dataset=folder needs data.root: a folder with train/ and val/ inside")
        root = Path(d.root)
        train = FolderDataset(root / "train", train_tf, seed, d.on_corrupt, limit=d.limit_train)
        val = FolderDataset(root / "val", val_tf, seed, d.on_corrupt)
        if val.classes != train.classes:
            raise InputError(f"{root}/val has classes {list(val.classes)[:5]}... but {root}/train has "
                             f"{list(train.classes)[:5]}...; both need the same class folders")
    if len(train) < d.batch_size:
        raise InputError(f"the training set has {len(train)} images, fewer than data.batch_size="
                         f"{d.batch_size}; lower the batch size")
    return DataBundle(train, val, train.classes)


def epoch_indices(dataset: AugmentedDataset, epoch: int, seed: int, rank: int, world: int) -> list[int]:
    """This process's shard of the epoch's shuffled order (the same on every run and resume)."""
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def train_loader(dataset: AugmentedDataset, indices: list[int], batch_size: int, workers: int) -> DataLoader:
    """Batches over ``indices`` in order; the last partial batch is dropped."""
    # Its own generator: creating a loader must not draw from the global RNG, whose state a
    # checkpoint restores mid-epoch (dropout and mixup read it).
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, drop_last=True,
                      num_workers=workers, collate_fn=collate_samples, generator=torch.Generator(),
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def eval_loader(dataset: AugmentedDataset, batch_size: int, workers: int, rank: int, world: int) -> DataLoader:
    """This process's exact (unpadded) shard of the validation set."""
    indices = list(range(rank, len(dataset), world))
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers,
                      collate_fn=collate_samples, generator=torch.Generator())
