"""Fashion-MNIST from its IDX files: reading (plain and gzipped), the dataset and its transforms,
the training config wiring, and a clear error for a missing folder, a missing file or a broken one.
Tiny IDX files written here stand in for the real ones; the real set is checked when installed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

import effml.train.data
from effml.data.datasets import FashionMNISTDataset, train_transform
from effml.data.fashion_mnist import (
    FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, FASHION_MNIST_ROOT, load_fashion_mnist,
)
from effml.data.transforms import eval_transform
from effml.errors import InputError
from effml.spec.entry import Preprocess
from effml.train.config import load_config
from effml.train.data import build_datasets, epoch_indices, train_loader
from effml.train.engine import fit

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 40, 20


def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: magic 0x0000 08 <ndim> (unsigned bytes), big-endian sizes, the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = _idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, :, :14] = 0  # a left/right asymmetry, so that a flip is visible
    return images, labels


def _fake(root: Path, gz: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four files of a tiny Fashion-MNIST in ``root``; returns split -> (images, labels)."""
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for (split, (img_name, lbl_name)), n in zip(FASHION_MNIST_FILES.items(), (N_TRAIN, N_TEST)):
        images, labels = _arrays(n, seed=n)
        _write(root / img_name, images, gz)
        _write(root / lbl_name, labels, gz)
        written[split] = (images, labels)
    return written


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_reads_plain_and_gzipped_idx_files(tmp_path, gz):
    written = _fake(tmp_path, gz)
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(tmp_path, split)
        assert images.dtype == torch.uint8 and images.shape == (len(written[split][0]), 28, 28)
        assert labels.dtype == torch.int64
        assert np.array_equal(images.numpy(), written[split][0])
        assert np.array_equal(labels.numpy(), written[split][1])


def test_a_replaced_file_is_read_again(tmp_path):
    _fake(tmp_path)
    assert len(load_fashion_mnist(tmp_path, "test")[0]) == N_TEST
    images, labels = _arrays(7, seed=1)
    _write(tmp_path / "t10k-images-idx3-ubyte", images, gz=True)
    _write(tmp_path / "t10k-labels-idx1-ubyte", labels, gz=True)
    assert len(load_fashion_mnist(tmp_path, "test")[0]) == 7


def test_the_dataset_gives_three_equal_channels_at_the_image_size_and_the_paper_class_names(tmp_path):
    written = _fake(tmp_path)
    tf = eval_transform(Preprocess(40, 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear"))
    ds = FashionMNISTDataset("val", tmp_path, tf)
    assert len(ds) == N_TEST and ds.classes == FASHION_MNIST_CLASSES
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and len(ds.classes) == 10
    image, label, index = ds[3]
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert label == written["test"][1][3] and index == 3
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert len(FashionMNISTDataset("train", tmp_path, tf, limit=12)) == 12


def _cfg(root: Path | None, *extra: str):
    data_root = [f"data.root={root}"] if root is not None else []
    return load_config(None, ["data.dataset=fashion_mnist", *data_root, "data.image_size=32",
                              "data.batch_size=8", "train.threads=1", *extra])


def test_the_config_builds_loaders_with_flip_augmentation_and_a_holdout(tmp_path):
    _fake(tmp_path)
    bundle = build_datasets(_cfg(tmp_path, "data.holdout=0.25"), Preprocess(32, 0.875))
    assert bundle.classes == FASHION_MNIST_CLASSES
    assert (len(bundle.train), len(bundle.holdout), len(bundle.val)) == (30, 10, N_TEST)
    assert set(bundle.train.indices).isdisjoint(bundle.holdout.indices)
    # clothing keeps its class mirrored: training flips it; held-out images use the eval transform
    assert any(isinstance(t, v2.RandomHorizontalFlip) for t in bundle.train.transform.transforms)
    assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in bundle.holdout.base.transform.transforms)
    loader = train_loader(bundle.train, epoch_indices(bundle.train, 0, 0, 0, 1), 8, 0)
    batches = list(loader)
    assert len(batches) == 3
    images, labels, indices, skipped = batches[0]
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,) and skipped == 0
    assert int(labels.min()) >= 0 and int(labels.max()) < 10


def test_limit_val_scores_the_first_validation_images(tmp_path):
    _fake(tmp_path)
    full = build_datasets(_cfg(tmp_path), Preprocess(32, 0.875)).val
    short = build_datasets(_cfg(tmp_path, "data.limit_val=3", "data.limit_train=9"), Preprocess(32, 0.875))
    assert (len(short.train), len(short.val)) == (9, 3)
    assert [int(short.val[i][1]) for i in range(3)] == [int(full[i][1]) for i in range(3)]
    shapes = load_config(None, ["data.dataset=shapes", "data.limit_val=3", "model.name=efficientdet_d0"])
    with pytest.raises(InputError, match="limit_val is not supported for detection"):
        build_datasets(shapes, Preprocess(32, 0.875))


def test_digits_are_still_never_flipped():
    for kind in ("basic", "randaugment"):
        tf = train_transform(kind, 32, (0.5,) * 3, (0.5,) * 3, natural_images=False)  # as digits get it
        assert not any(isinstance(t, v2.RandomHorizontalFlip) for t in tf.transforms)


def test_without_data_root_the_debian_package_folder_is_read(tmp_path, monkeypatch):
    assert FASHION_MNIST_ROOT == Path("/usr/share/datasets/fashion-mnist")
    monkeypatch.setattr(effml.train.data, "FASHION_MNIST_ROOT", tmp_path / "default")
    with pytest.raises(InputError, match="default does not exist"):
        build_datasets(_cfg(None), Preprocess(32, 0.875))
    _fake(tmp_path / "default")
    assert len(build_datasets(_cfg(None), Preprocess(32, 0.875)).train) == N_TRAIN


def test_the_shipped_config_starts_training(tmp_path):
    _fake(tmp_path / "data")
    run = tmp_path / "run"
    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml",
                      [f"data.root={tmp_path / 'data'}", "data.batch_size=8", "train.max_steps=1",
                       "train.threads=1", f"run.dir={run}"])
    assert cfg.data.dataset == "fashion_mnist" and cfg.data.image_size == 32
    result = fit(cfg, quiet=True)  # its own model: efficientnet_digits.json
    assert result.global_step == 1
    info = json.loads((run / "run.json").read_text())
    assert info["classes"] == list(FASHION_MNIST_CLASSES) and info["crop_pct"] == 1.0


# ---------------------------------------------------------------- errors


def test_a_missing_folder_names_it_and_says_how_to_get_the_data(tmp_path):
    with pytest.raises(InputError) as e:
        build_datasets(_cfg(tmp_path / "nowhere"), Preprocess(32, 0.875))
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg and "does not exist" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "data.root" in msg
    assert "train-images-idx3-ubyte[.gz]" in msg


def test_a_file_instead_of_a_folder_is_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        load_fashion_mnist(tmp_path / "f", "train")


def test_a_missing_file_is_named_with_its_folder(tmp_path):
    _fake(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(InputError) as e:
        build_datasets(_cfg(tmp_path), Preprocess(32, 0.875))
    msg = str(e.value)
    assert f"{tmp_path} lacks t10k-labels-idx1-ubyte[.gz];" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("keep", [0.5, 0.999, 0.001])
def test_a_truncated_file_is_named_as_corrupt_or_truncated(tmp_path, gz, keep):
    _fake(tmp_path, gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    data = path.read_bytes()
    path.write_bytes(data[:max(1, int(len(data) * keep))])
    with pytest.raises(InputError) as e:
        load_fashion_mnist(tmp_path, "train")
    assert f"{path} is corrupt or truncated" in str(e.value) and "replace it" in str(e.value)
    assert len(load_fashion_mnist(tmp_path, "test")[0]) == N_TEST  # the other split is intact


def test_wrong_files_are_refused_with_what_was_found(tmp_path):
    _fake(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    labels = tmp_path / "train-labels-idx1-ubyte"
    images.write_bytes(labels.read_bytes())  # a labels file where the images belong
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte is corrupt .*magic number 0x00000801, "
                                         r"expected 0x00000803"):
        load_fashion_mnist(tmp_path, "train")
    _write(images, _arrays(N_TRAIN - 1, 0)[0], gz=False)
    with pytest.raises(InputError, match=f"disagree: {N_TRAIN - 1} images but {N_TRAIN} labels"):
        load_fashion_mnist(tmp_path, "train")
    _write(images, _arrays(N_TRAIN, 0)[0], gz=False)
    _write(labels, np.full(N_TRAIN, 10), gz=False)
    with pytest.raises(InputError, match="label 10, but the classes are 0-9"):
        load_fashion_mnist(tmp_path, "train")
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"not gzip, not IDX")
    with pytest.raises(InputError, match="t10k-images-idx3-ubyte is corrupt or truncated"):
        load_fashion_mnist(tmp_path, "test")


def test_a_broken_gzip_stream_is_named(tmp_path):
    _fake(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(30))
    with pytest.raises(InputError, match=f"{path} is corrupt or truncated \\(gzip"):
        load_fashion_mnist(tmp_path, "test")


# ---------------------------------------------------------------- the real data set, if installed


@pytest.mark.skipif(not all((FASHION_MNIST_ROOT / f"{n}.gz").is_file() or (FASHION_MNIST_ROOT / n).is_file()
                            for pair in FASHION_MNIST_FILES.values() for n in pair),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_the_installed_data_set_has_60000_and_10000_labelled_images():
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels = load_fashion_mnist(FASHION_MNIST_ROOT, split)
        assert images.shape == (n, 28, 28)
        assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), n // 10))  # balanced
