"""Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, arXiv 1708.07747): 70,000 real 28x28 grayscale
photos of Zalando articles in 10 classes, 60,000 for training and 10,000 for testing.

Read from the four IDX files of the original release, plain or gzipped, in a folder on disk
(the Debian package ``dataset-fashion-mnist`` puts them in ``FASHION_MNIST_ROOT``). Nothing is
downloaded. torchvision's own reader (``datasets.mnist.read_image_file``) is not used: it does not
decompress ``.gz`` files and reports a truncated file as an assertion or a tensor-shape error.
"""

from __future__ import annotations

import gzip
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from effml.errors import InputError
from effml.files import os_error_reason

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")  # where dataset-fashion-mnist installs
# Label order of the paper's Table 1 (and of the IDX label files).
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
# split -> (images file, labels file), the names of the original release (without .gz)
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only type the release uses


def how_to_get() -> str:
    """The advice every missing-data error ends with."""
    names = ", ".join(f"{n}[.gz]" for pair in FASHION_MNIST_FILES.values() for n in pair)
    return (f"install it with `apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_ROOT}), "
            f"or set data.root to a folder holding {names}")


def find_fashion_mnist_files(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """split ('train', 'test') -> (images file, labels file) in ``root``, plain or ``.gz``.

    Raises ``InputError`` naming the folder and every missing file when the set is incomplete.
    """
    root = Path(root)
    found: dict[str, tuple[Path, Path]] = {}
    missing = []
    try:
        if not root.exists():
            raise InputError(f"Fashion-MNIST folder {root} does not exist; {how_to_get()}")
        if not root.is_dir():
            raise InputError(f"Fashion-MNIST folder {root} is a file, not a folder; {how_to_get()}")
        for split, names in FASHION_MNIST_FILES.items():
            paths = []
            for name in names:
                # the plain file first: no decompression on every start
                path = next((p for p in (root / name, root / f"{name}.gz") if p.is_file()), None)
                if path is None:
                    missing.append(f"{name}[.gz]")
                paths.append(path)
            found[split] = (paths[0], paths[1])
    except OSError as e:  # e.g. a folder that may not be searched
        cause, _ = os_error_reason(e, root)
        raise InputError(f"cannot read Fashion-MNIST folder {root}: {cause}; check its permissions") from None
    if missing:
        raise InputError(f"Fashion-MNIST folder {root} lacks {', '.join(missing)}; {how_to_get()}")
    return found


def _corrupt(path: Path, what: str) -> InputError:
    return InputError(f"Fashion-MNIST file {path} is corrupt or truncated ({what}); replace it with a "
                      f"complete copy (reinstall dataset-fashion-mnist, or copy the file again)")


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """The unsigned-byte array of an IDX file (plain or ``.gz``) with ``ndim`` dimensions.

    Raises ``InputError`` naming the file when it cannot be read, is not such an IDX file, or
    holds more or fewer bytes than its header declares.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _corrupt(path, f"gzip: {e}") from None
    except OSError as e:
        cause, _ = os_error_reason(e, path)
        raise InputError(f"cannot read Fashion-MNIST file {path}: {cause}; check the file and its "
                         f"permissions") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _corrupt(path, f"{len(data)} bytes, shorter than its {header}-byte header")
    # magic: two zero bytes, the type code, the number of dimensions (big-endian, like the sizes)
    zero, kind, dims = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or kind != _IDX_UBYTE or dims != ndim:
        raise _corrupt(path, f"magic number 0x{data[:4].hex()}, expected 0x0000{_IDX_UBYTE:02x}{ndim:02x} "
                             f"for {ndim}-dimensional unsigned bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != size:
        raise _corrupt(path, f"its header declares {'x'.join(map(str, shape))} = {size} bytes of data, "
                             f"the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


@lru_cache(maxsize=4)
def _load_split_cached(images: Path, labels: Path, stamp: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    del stamp  # only part of the cache key: a replaced file is read again
    x = read_idx(images, 3)
    y = read_idx(labels, 1)
    if len(x) != len(y):
        raise InputError(f"Fashion-MNIST files {images} and {labels} disagree: {len(x)} images but "
                         f"{len(y)} labels; replace them with a matching pair")
    if len(y) and int(y.max()) >= len(FASHION_MNIST_CLASSES):
        raise _corrupt(labels, f"label {int(y.max())}, but the classes are 0-{len(FASHION_MNIST_CLASSES) - 1}")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


def load_fashion_mnist(root: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, H, W], labels int64 [N]) of split 'train' or 'test' read from ``root``
    (cached: treat them as read-only)."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"split {split!r} is not one of {list(FASHION_MNIST_FILES)}")
    images, labels = find_fashion_mnist_files(root)[split]
    try:
        stamp = tuple((s.st_mtime_ns, s.st_size) for s in (images.stat(), labels.stat()))
    except OSError as e:
        cause, _ = os_error_reason(e, images)
        raise InputError(f"cannot read Fashion-MNIST files in {Path(root)}: {cause}") from None
    return _load_split_cached(images.absolute(), labels.absolute(), stamp)
