"""Image loading and eval preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from effml import get_entry
from effml.data import class_names, eval_transform, imagenet_classes, load_image
from effml.errors import InputError


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA", "CMYK"])
def test_load_image_any_mode_is_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (13, 21, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (13, 21), dtype=np.uint16))
    else:
        img = rgb.convert(mode)
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (21, 13)
    if mode == "I;16":  # rescaled to 8 bits, not clipped to white
        assert 64 < np.asarray(out).mean() < 192


def test_load_image_alpha_is_composited_on_white(tmp_path):
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png")).min() == 255


def test_load_image_errors_name_the_file(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(good)
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:200])
    for name, words in [("text.jpg", "not an image"), ("cut.jpg", "cannot read"),
                        ("missing.png", "does not exist")]:
        with pytest.raises(InputError, match=words) as info:
            load_image(tmp_path / name)
        assert name in str(info.value)


def test_eval_transform_resize_crop_normalise():
    pre = get_entry("tf_efficientnet_b0.ap_in1k").preprocess  # AdvProp: [-1, 1] inputs
    transform = eval_transform(pre, input_size=32)
    white = Image.new("RGB", (90, 45), (255, 255, 255))
    x = transform(white)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.ones_like(x))
    resize = transform.transforms[0]
    assert resize.size == [int(32 / pre.crop_pct)]  # shorter side to size / crop_pct
    default = eval_transform(get_entry("efficientnet_b0").preprocess)
    assert default(white).shape == (3, 224, 224)


def test_imagenet_classes():
    names = imagenet_classes()
    assert len(names) == 1000 and names[1] == "goldfish"
    assert class_names(1000) == names and class_names(10) is None


def test_class_counts_are_read_once_per_process_until_the_folder_changes(tmp_path, monkeypatch):
    """A search counts its proxy's classes twice (the space, the check): the data is read once."""
    import os

    from effml.train import data as train_data
    from effml.train.config import load_config

    for name in ("cat", "dog"):
        for split in ("train", "val"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8), name == "cat" and "red" or "blue").save(tmp_path / split / name / "a.png")
    cfg = load_config(None, ["data.dataset=folder", f"data.root={tmp_path}", "data.batch_size=1"])
    reads = []
    build = train_data.build_datasets
    monkeypatch.setattr(train_data, "build_datasets", lambda *a: reads.append(1) or build(*a))
    assert train_data.num_classes(cfg) == train_data.num_classes(cfg) == 2 and len(reads) == 1
    for split in ("train", "val"):
        (tmp_path / split / "emu").mkdir()
        Image.new("RGB", (8, 8), "green").save(tmp_path / split / "emu" / "a.png")
    os.utime(tmp_path / "train", ns=(1, 1))  # a new class folder changes the folder's time anyway
    assert train_data.num_classes(cfg) == 3 and len(reads) == 2
