"""Training and validation data sets that return (image, label, index), with reproducible
per-sample augmentation and counted skipping of corrupt images."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import InterpolationMode, v2

from effml.data.digits import DIGITS_CLASSES, load_digits_split
from effml.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from effml.data.transforms import load_image
from effml.errors import InputError

Sample = tuple[torch.Tensor, int, int]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of one sample's augmentation: the same on any process, worker or resume."""
    return (seed * 1_000_003 + epoch * 10_007 + index) % (2**63 - 1)


class AugmentedDataset(Dataset):
    """Base: a list of samples; ``transform`` runs under a per-(seed, epoch, index) RNG."""

    classes: tuple[str, ...]

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], seed: int = 0) -> None:
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch, so that augmentation differs between epochs but not between runs."""
        self.epoch = epoch

    def _augment(self, image: torch.Tensor, index: int) -> torch.Tensor:
        # One image is too small to split over threads: in the main process, intra-op threads
        # only add contention (measured 4.6 ms vs 68 ms per 32 px digit on a busy 2-core box).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, self.epoch, index))
                return self.transform(image)
        finally:
            torch.set_num_threads(threads)


class DigitsDataset(AugmentedDataset):
    """The embedded digits data set (train or val split) at ``image_size``."""

    def __init__(self, split: str, image_size: int, transform: Callable, seed: int = 0,
                 limit: int | None = None) -> None:
        super().__init__(transform, seed)
        xtr, ytr, xva, yva = load_digits_split(image_size)
        self.images, self.labels = (xtr, ytr) if split == "train" else (xva, yva)
        if limit is not None:
            self.images, self.labels = self.images[:limit], self.labels[:limit]
        self.classes = DIGITS_CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        return self._augment(self.images[index], index), int(self.labels[index]), index


class FashionMNISTDataset(AugmentedDataset):
    """Fashion-MNIST read from the IDX files in ``root``: 'train' (60,000) or 'val' (the 10,000
    test images); 28x28 grayscale as 3 equal channels, resized by the transform."""

    def __init__(self, split: str, root: str | Path, transform: Callable, seed: int = 0,
                 limit: int | None = None) -> None:
        super().__init__(transform, seed)
        self.root = Path(root)
        self.images, self.labels = load_fashion_mnist(root, "train" if split == "train" else "test")
        if limit is not None:
            self.images, self.labels = self.images[:limit], self.labels[:limit]
        self.classes = FASHION_MNIST_CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        # Kept at 28x28, one channel, in memory (47 MB for 60k; 3 channels at 64 px would be 737 MB);
        # 3 channels because the zoo's models and weights take RGB, as for digits.
        image = self.images[index].unsqueeze(0).expand(3, -1, -1)
        return self._augment(image, index), int(self.labels[index]), index


def _inside_class_folders(root: Path, samples: list[tuple[str, int]], classes: list[str]) -> list[tuple[str, int]]:
    """``samples`` less those reached through a symlinked folder inside a class folder: torchvision
    follows every link, so a link back up (``cat/loop -> ..``) would label every other class's images
    (many times over) as this class. A class folder may itself be a link, and image files may be."""
    kept, skipped = [], 0
    for path, label in samples:
        class_dir = root / classes[label]
        inner = Path(path).relative_to(class_dir).parent
        links = [class_dir.joinpath(*inner.parts[:i + 1]) for i in range(len(inner.parts))]
        if any(p.is_symlink() for p in links):
            skipped += 1
        else:
            kept.append((path, label))
    if skipped:
        warnings.warn(f"dataset folder {root}: {skipped} image(s) reached through symlinked folders inside class "
                      f"folders are not used (a link can lead out of its class, or loop); link image files "
                      f"or whole class folders instead", stacklevel=3)
    return kept


class FolderDataset(AugmentedDataset):
    """``root/<class>/<image>`` (torchvision's ImageFolder layout); corrupt images are skipped
    (``__getitem__`` returns None, the collate function counts them) or raise, by ``on_corrupt``."""

    def __init__(self, root: str | Path, transform: Callable, seed: int = 0,
                 on_corrupt: str = "skip", limit: int | None = None) -> None:
        super().__init__(transform, seed)
        root = Path(root)
        if not root.is_dir():
            raise InputError(f"dataset folder {root} does not exist; expected {root}/<class>/<image files>")
        try:
            classes, class_to_idx = find_classes(str(root))
        except FileNotFoundError:
            raise InputError(f"dataset folder {root} has no class folders; expected "
                             f"{root}/<class>/<image files>") from None
        try:
            samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
        except FileNotFoundError:
            samples = []
        samples = _inside_class_folders(root, samples, classes)
        if not samples or len({label for _, label in samples}) < len(classes):
            found = {classes[label] for _, label in samples}
            empty = [c for c in classes if c not in found]
            raise InputError(f"dataset folder {root}: class folder(s) {empty[:5]} hold no images "
                             f"(extensions {', '.join(IMG_EXTENSIONS)}); add images or remove them")
        self.root = root
        self.samples = samples[:limit] if limit is not None else samples
        self.classes = tuple(classes)
        self.on_corrupt = on_corrupt
        self._to_tensor = v2.PILToTensor()

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        """The file of sample ``index``."""
        return Path(self.samples[index][0])

    def __getitem__(self, index: int) -> Sample | None:
        path, label = self.samples[index]
        try:
            image = self._to_tensor(load_image(path))
        except InputError as e:
            if self.on_corrupt == "error":
                raise InputError(f"{e} (set data.on_corrupt=skip to skip unreadable images)") from None
            warnings.warn(f"skipping unreadable image: {e}", stacklevel=2)
            return None
        return self._augment(image, index), label, index


class IndexSubset(AugmentedDataset):
    """The samples of ``base`` at ``indices``, renumbered: the index a sample reports is its place
    here (what per-sample caches key on); its augmentation still follows its index in ``base``."""

    def __init__(self, base: AugmentedDataset, indices: Sequence[int]) -> None:
        super().__init__(base.transform, base.seed)
        self.base = base
        self.indices = list(indices)
        self.classes = base.classes

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the underlying data set."""
        super().set_epoch(epoch)
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def root(self) -> Path | None:
        """The folder the underlying data set reads (None for in-memory data)."""
        return getattr(self.base, "root", None)

    def __getitem__(self, index: int) -> Sample | None:
        sample = self.base[self.indices[index]]
        return None if sample is None else (sample[0], sample[1], index)


def image_file(dataset: Dataset, index: int) -> Path | None:
    """The file sample ``index`` of ``dataset`` is read from; None for in-memory data (digits)."""
    while isinstance(dataset, IndexSubset):
        dataset, index = dataset.base, dataset.indices[index]
    image_path = getattr(dataset, "image_path", None)
    return Path(image_path(index)) if image_path is not None else None


PROBE_TRIES = 64  # images tried, spread over a data set, before calling it unreadable


def check_readable(dataset: Dataset, what: str, tries: int = PROBE_TRIES) -> None:
    """Raise ``InputError`` unless one of ``tries`` images spread evenly over ``dataset`` decodes.

    A data set read from files (see ``image_file``) whose images are all, or nearly all,
    unreadable is refused at once instead of training on nothing (``data.on_corrupt=skip`` skips a
    few bad files, not a broken data set). Stops at the first readable image: one read when healthy.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0 or image_file(dataset, 0) is None:
        return
    count = min(n, tries)
    order = sorted({round(k * (n - 1) / max(count - 1, 1)) for k in range(count)})
    errors = []
    for index in order:
        try:
            load_image(image_file(dataset, index))  # type: ignore[arg-type]
            return
        except InputError as e:
            errors.append(str(e))
    root = getattr(dataset, "root", None) or getattr(dataset, "image_dir", None)
    where = f" under {root}" if root is not None else ""
    tried = f"none of its {n} images" if len(order) == n else \
        f"none of {len(order)} images tried, spread over all {n},"
    raise InputError(f"the {what}{where} has no readable images: {tried} could be read (first: "
                     f"{errors[0]}); check those files (copied completely? the right folder?)")


def collate_samples(samples: Sequence[Sample | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Stack a batch, dropping skipped samples: (images, labels, indices, number skipped)."""
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([s[0] for s in kept])
    labels = torch.tensor([s[1] for s in kept], dtype=torch.long)
    indices = torch.tensor([s[2] for s in kept], dtype=torch.long)
    return images, labels, indices, skipped


def train_transform(kind: str, size: int, mean: Sequence[float], std: Sequence[float],
                    natural_images: bool = True, ra_ops: int = 2, ra_magnitude: int = 9,
                    hflip: bool = False) -> v2.Compose:
    """uint8 CHW tensor -> normalised float tensor, with the chosen augmentation.

    Natural images get a random resized crop and a horizontal flip; small centred items (digits,
    Fashion-MNIST) a small random affine instead, plus a horizontal flip with ``hflip`` (clothing
    keeps its class mirrored; a digit does not).
    """
    if natural_images:
        geometric = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometric = [v2.Resize((size, size), antialias=True), *([v2.RandomHorizontalFlip()] if hflip else []),
                     v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))]
    policy: list[v2.Transform] = []
    if kind == "randaugment":
        policy = [v2.RandAugment(num_ops=ra_ops, magnitude=ra_magnitude,
                                 interpolation=InterpolationMode.BILINEAR)]
    elif kind == "autoaugment":
        policy = [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)]
    if kind == "none":
        geometric = [v2.Resize(size, antialias=True), v2.CenterCrop(size)] if natural_images \
            else [v2.Resize((size, size), antialias=True)]
    return v2.Compose([*geometric, *policy, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])
