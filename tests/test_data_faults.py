"""Data and file-system faults are clear errors, never a hang, a crash or a half-written file:
unreadable training images (a batch left with one image, a data set that is all or nearly all
bad), a validation set with nothing readable, a single class, images too large to decode, and
operating-system errors (full disk, read-only folder, a file where a folder is needed) in
``effml export``, ``effml detect -o`` and ``effml predict``."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

import effml
from effml.data.datasets import FolderDataset
from effml.data.transforms import MAX_PIXELS_ENV, load_image
from effml.errors import InputError
from effml.files import make_output_dir, os_error
from effml.spec import NetworkSpec, parse_arch
from effml.spec.entry import Preprocess
from effml.train.config import load_config
from effml.train.data import build_datasets, epoch_indices
from effml.train.trainer import Trainer, preserved_global_state
from effml.zoo import spec_to_json

EFFML = shutil.which("effml", path=str(Path(sys.executable).parent)) or shutil.which("effml")
DETECTOR = Path(__file__).resolve().parents[1] / "configs" / "efficientdet_tiny.json"

# Five stride-2 stages take a 32 px image to 1x1: in training mode its BatchNorms cannot take a
# batch of one image ("Expected more than 1 value per channel"), which is what skipping can leave.
DEEP = NetworkSpec(
    stages=parse_arch([["ds_r1_k3_s2_e1_c16"], ["ir_r1_k3_s2_e4_c24"], ["ir_r1_k3_s2_e4_c32"],
                       ["ir_r1_k3_s2_e4_c40"]]),
    stem_channels=16, head_channels=64, num_classes=2, resolution=32,
)


# ---------------------------------------------------------------- helpers

def _folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n: int = 8) -> None:
    for split in ("train", "val"):
        for c, colour in zip(classes, ((200, 30, 30), (30, 30, 200))):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + i, 36), colour).save(d / f"{i}.png")


def _spoil(paths: list[Path]) -> None:
    for p in paths:
        p.write_bytes(b"not an image")


def _cfg(root: Path, *extra: str):
    return load_config(None, [f"run.dir={root / 'run'}", "data.dataset=folder", f"data.root={root}",
                              "data.image_size=32", "data.batch_size=4", "train.epochs=1",
                              "train.ema_decay=null", "train.threads=1", "optim.name=adamw", *extra])


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A small PNG whose header claims ``width`` x ``height``: decoding it would need the memory
    of the full size (and then fail, its data is 4x4), so only a header check refuses it cleanly."""
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def _run(*args: str | Path, patch: str = "", stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """The installed ``effml`` (or, with ``patch``, the same app after that Python code ran)."""
    if patch:
        code = f"{patch}\nimport sys\nfrom effml.cli.main import app\nsys.argv[0] = 'effml'\napp()"
        cmd = [sys.executable, "-c", code, *map(str, args)]
    else:
        assert EFFML, "the effml console script is not installed (pip install -e .)"
        cmd = [EFFML, *map(str, args)]
    return subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 and exactly one ``error:`` line on stderr (warnings aside), with ``words`` in it."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------- 1. skipped training images

def test_a_batch_left_with_one_image_is_dropped_and_the_epoch_goes_on(tmp_path):
    model = effml.create_model(DEEP).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        model(torch.randn(1, 3, 32, 32))  # what the trainer must never feed it
    _folder(tmp_path)
    cfg = _cfg(tmp_path)
    samples = FolderDataset(tmp_path / "train", lambda x: x).samples
    first = epoch_indices(list(range(len(samples))), 0, cfg.train.seed, 0, 1)[:4]
    _spoil([Path(samples[i][0]) for i in first[:3]])  # the first batch keeps one image
    with preserved_global_state(), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer = Trainer(cfg, model=DEEP)
        result = trainer.train_epoch()
    assert result["steps"] == 3 and trainer.dropped_batches == 1 and trainer.skipped == 3
    assert trainer.epoch == 1 and trainer.global_step == 3  # the epoch ended, no stall
    assert any("dropped a training batch left with 1 readable image" in str(w.message) for w in seen)


def test_a_few_unreadable_images_are_skipped_and_training_goes_on(tmp_path):
    _folder(tmp_path)
    _spoil([tmp_path / "train" / "cat" / "0.png", tmp_path / "train" / "dog" / "5.png"])
    with preserved_global_state(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(_cfg(tmp_path), model=DEEP)
        steps = trainer.train_epoch()["steps"]
    assert trainer.skipped == 2 and steps + trainer.dropped_batches == 4 and steps >= 3


def test_an_all_unreadable_training_set_is_refused_at_once(tmp_path):
    _folder(tmp_path)
    _spoil(list((tmp_path / "train").rglob("*.png")))
    with pytest.raises(InputError) as info, preserved_global_state():
        Trainer(_cfg(tmp_path), model=DEEP)
    msg = str(info.value)
    assert f"training set under {tmp_path / 'train'} has no readable images" in msg
    assert "none of its 16 images could be read" in msg and "not an image PIL can read" in msg


def test_a_nearly_all_unreadable_training_set_stops_with_counts_and_files(tmp_path):
    _folder(tmp_path)
    # two readable images of 16: the up-front check finds one, no batch ever has two
    _spoil([p for p in (tmp_path / "train").rglob("*.png") if p.name != "3.png"])
    with preserved_global_state(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(_cfg(tmp_path, "train.epochs=50"), model=DEEP)
        with pytest.raises(InputError) as info:
            for _ in range(50):
                trainer.train_epoch()
    msg = str(info.value)
    assert msg.startswith("training stopped: 14 of the last 16 training images tried under") or \
        msg.startswith("training stopped: 14 of 16 training images tried under"), msg
    assert str(tmp_path / "train") in msg and ".png" in msg and "data.on_corrupt=skip" in msg
    assert trainer.epoch == 0 and trainer.global_step <= 1  # within the first epoch, not 50


def test_mostly_unreadable_but_usable_batches_still_stop(tmp_path):
    _folder(tmp_path, n=16)  # 32 images, 75% unreadable: some batches still keep 2 or more
    _spoil([p for p in (tmp_path / "train").rglob("*.png") if int(p.stem) % 4])
    with preserved_global_state(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(_cfg(tmp_path, "train.epochs=5"), model=DEEP)
        with pytest.raises(InputError, match=r"training stopped: \d+ of \d+ training images .*unreadable"):
            for _ in range(5):
                trainer.train_epoch()
    assert trainer.epoch == 0


def test_cli_train_on_unreadable_images_is_one_line(tmp_path):
    _folder(tmp_path)
    _spoil(list((tmp_path / "train").rglob("*.png")))
    spec = tmp_path / "deep.json"
    spec.write_text(spec_to_json(DEEP))
    proc = _run("train", f"model.name={spec}", "data.dataset=folder", f"data.root={tmp_path}",
                "data.image_size=32", "data.batch_size=4", "train.epochs=3", f"run.dir={tmp_path / 'run'}")
    _one_error_line(proc, "has no readable images", str(tmp_path / "train"))
    assert not (tmp_path / "run" / "checkpoints").exists() or not _files(tmp_path / "run" / "checkpoints")


# ---------------------------------------------------------------- 2. validation set, one class

def test_a_validation_set_with_no_readable_image_is_an_error(tmp_path):
    _folder(tmp_path)
    _spoil(list((tmp_path / "val").rglob("*.png")))
    with pytest.raises(InputError, match=r"validation set under .*val has no readable images"):
        build_datasets(_cfg(tmp_path), Preprocess(32, 0.875))


def test_a_single_class_is_an_error_not_a_perfect_score(tmp_path):
    _folder(tmp_path, classes=("cat",))
    with pytest.raises(InputError, match=r"single class folder \('cat'\).*at least two classes"):
        build_datasets(_cfg(tmp_path), Preprocess(32, 0.875))


def _coco(root: Path, split: str, names: list[str], write: str = "ok") -> None:
    """``root/<split>/`` with images ``names`` (32x24) and annotations.json; ``write``: ok, junk
    (unreadable files), none (files missing)."""
    d = root / split
    d.mkdir(parents=True)
    images, anns = [], []
    for k, name in enumerate(names, start=1):
        images.append({"id": k, "file_name": name, "width": 32, "height": 24})
        anns.append({"id": k, "image_id": k, "category_id": 1, "bbox": [2, 2, 10, 8]})
        if write == "ok":
            Image.new("RGB", (32, 24), (9, 99, 199)).save(d / name)
        elif write == "junk":
            (d / name).write_bytes(b"\x89PNG cut short")
    (d / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))


@pytest.mark.parametrize("val, words", [
    ("none", r"all 2 image\(s\) listed in .*val.*annotations.json are missing"),
    ("junk", r"validation set under .*val has no readable images: none of its 2 images"),
    ("empty", r"validation set \(.*annotations.json\) has no images"),
])
def test_a_coco_validation_set_with_no_readable_image_is_an_error(tmp_path, val, words):
    _coco(tmp_path, "train", [f"t{i}.png" for i in range(4)])
    _coco(tmp_path, "val", [] if val == "empty" else ["v1.png", "v2.png"], write=val)
    cfg = load_config(None, ["data.dataset=coco", f"data.root={tmp_path}", "data.batch_size=2",
                             "data.image_size=32"])
    with pytest.raises(InputError, match=words), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_datasets(cfg, Preprocess(32, 1.0))


# ---------------------------------------------------------------- 3. images too large to decode

@pytest.mark.parametrize("width, height", [(9000, 8000), (10000, 10000), (20000, 20000)])
def test_huge_images_are_refused_from_the_header_with_size_and_advice(tmp_path, width, height):
    # 72 Mpx: over effml's 64; 100 Mpx: PIL would warn; 400 Mpx: PIL would raise its own error
    path = _png_claiming(tmp_path / "big.png", width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning (or any other) surfaces
        with pytest.raises(InputError) as info:
            load_image(path)
    msg = str(info.value)
    assert str(path) in msg and f"{width * height / 1e6:.1f} megapixels" in msg
    assert "limit of 64 megapixels" in msg and MAX_PIXELS_ENV in msg
    assert "truncated" not in msg  # refused before decoding, not after


def test_the_pixel_limit_follows_the_environment_and_the_parameter(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("RGB", (40, 30), (5, 5, 5)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(InputError, match=r"40x30 pixels .*limit of 0.001 megapixels"):
        load_image(path)
    assert load_image(path, max_pixels=1200).size == (40, 30)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match=f"{MAX_PIXELS_ENV}='lots' is not a positive number"):
        load_image(path)


def test_a_huge_image_in_a_data_set_is_skipped_or_refused(tmp_path):
    _folder(tmp_path)
    big = _png_claiming(tmp_path / "train" / "cat" / "9.png", 12000, 9000)
    ds = FolderDataset(tmp_path / "train", lambda x: x)
    index = [Path(p) for p, _ in ds.samples].index(big)
    with pytest.warns(UserWarning, match=r"skipping unreadable image: image .*9.png is 12000x9000 pixels"):
        assert ds[index] is None
    strict = FolderDataset(tmp_path / "train", lambda x: x, on_corrupt="error")
    with pytest.raises(InputError, match=r"108.0 megapixels.*data.on_corrupt=skip"):
        strict[index]


def test_cli_predict_refuses_huge_images_one_line_each(tmp_path):
    paths = [_png_claiming(tmp_path / f"{w}.png", w, h) for w, h in ((9000, 8000), (20000, 20000))]
    proc = _run("predict", "efficientnet_b0", "--input-size", "32", *paths)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "DecompressionBomb" not in proc.stderr
    assert len(errors) == 3 and all(str(p) in e and "megapixels" in e for p, e in zip(paths, errors))


# ---------------------------------------------------------------- 4. operating-system errors

@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "the disk is full"), (errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
    (errno.ENOENT, "does not exist"), (errno.EDQUOT, "quota"),
])
def test_os_errors_are_named_in_words(code, words, tmp_path):
    msg = str(os_error(OSError(code, os.strerror(code)), "write", tmp_path / "x.onnx"))
    assert msg.startswith(f"cannot write {tmp_path / 'x.onnx'}: ") and words in msg


def test_an_output_folder_under_a_file_or_on_a_read_only_disk_is_refused(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match=r"--out-dir .*afile/out is under .*afile, which is a file"):
        make_output_dir(tmp_path / "afile" / "out", "--out-dir")

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    with pytest.raises(InputError, match=r"cannot create --out-dir folder /proc/effml-nope: a folder on the path"):
        make_output_dir(Path("/proc/effml-nope"), "--out-dir")  # the kernel refuses, even to root
    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(InputError, match=r"cannot create --out-dir folder .*new/out: the file system is read-only"):
        make_output_dir(tmp_path / "new" / "out", "--out-dir")
    assert _files(tmp_path) == ["afile"]


def _tiny_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return effml.create_model(NetworkSpec(stages=parse_arch([["ds_r1_k3_s1_e1_c8"]]), stem_channels=8,
                                          head_channels=16, num_classes=3, resolution=16)).eval()


@pytest.mark.parametrize("fault", ["enospc_on_fsync", "erofs_on_rename"])
def test_export_on_a_full_or_read_only_disk_leaves_nothing(tmp_path, monkeypatch, fault):
    from effml.deploy import onnx_export

    out = tmp_path / "new" / "deeper" / "model.onnx"
    code = errno.ENOSPC if fault.startswith("enospc") else errno.EROFS

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    if fault == "enospc_on_fsync":
        monkeypatch.setattr(onnx_export, "fsync_file", fail)
    else:
        monkeypatch.setattr(onnx_export.os, "replace", fail)
    with pytest.raises(InputError) as info:
        onnx_export.export_onnx(_tiny_classifier(), out, input_size=16, verify=False)
    msg = str(info.value)
    assert msg.startswith(f"cannot write the ONNX model {out}: ") and "nothing was written" in msg
    assert ("disk is full" if code == errno.ENOSPC else "read-only") in msg
    assert _files(tmp_path) == []  # no temp folder, no model, not even the folders it made


def test_export_never_replaces_a_special_file(tmp_path):
    from effml.deploy import export_onnx

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="exists and is not a regular file"):
        export_onnx(_tiny_classifier(), fifo, input_size=16)
    assert fifo.is_fifo() and _files(tmp_path) == ["pipe.onnx"]


def test_export_under_a_file_is_refused_before_exporting(tmp_path):
    from effml.deploy import export_onnx

    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match=r"cannot write the ONNX model .*afile/m.onnx: .*afile is a file, not a folder"):
        export_onnx(_tiny_classifier(), tmp_path / "afile" / "m.onnx", input_size=16)
    with pytest.raises(InputError, match="cannot create the folder of the ONNX model /proc/effml-nope: "):
        export_onnx(_tiny_classifier(), "/proc/effml-nope/m.onnx", input_size=16)
    assert _files(tmp_path) == ["afile"]


def test_cli_export_where_no_folder_can_be_made_is_one_line(tmp_path):
    spec = tmp_path / "tiny.json"
    spec.write_text(spec_to_json(NetworkSpec(stages=parse_arch([["ds_r1_k3_s1_e1_c8"]]), stem_channels=8,
                                             head_channels=16, num_classes=3, resolution=16)))
    proc = _run("export", spec, "--onnx", "/proc/effml-nope/m.onnx")  # the kernel refuses, even to root
    _one_error_line(proc, "cannot create the folder of the ONNX model /proc/effml-nope", "nothing was written")
    assert _files(tmp_path) == ["tiny.json"]


def test_cli_detect_to_a_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (9, 9, 9)).save(image)
    out = tmp_path / "afile" / "out"
    proc = _run("detect", DETECTOR, image, "-o", out)
    _one_error_line(proc, f"--out-dir {out} is under {tmp_path / 'afile'}, which is a file")
    assert _files(tmp_path) == ["a.png", "afile"]


def test_cli_detect_on_a_disk_that_fills_up_leaves_no_partial_output(tmp_path):
    images = []
    for i, size in enumerate(((40, 30), (50, 20), (30, 30))):
        images.append(tmp_path / f"img{i}.png")
        Image.new("RGB", size, (30 * i, 60, 90)).save(images[-1])
    huge = _png_claiming(tmp_path / "huge.png", 10000, 9000)
    out = tmp_path / "out" / "det"
    # The disk fills up while the second annotated image is being written.
    patch = (
        "import errno, os, PIL.Image\n"
        "real, calls = PIL.Image.Image.save, []\n"
        "def save(self, fp, *a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        fp.write(b'\\x89PNG half')\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return real(self, fp, *a, **k)\n"
        "PIL.Image.Image.save = save\n")
    proc = _run("detect", DETECTOR, images[0], huge, *images[1:], "-o", out, patch=patch)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "huge.png is 10000x9000 pixels" in errors[0]  # a per-image error, reported as it happens
    assert errors[-1].startswith(f"error: cannot write {out / 'img1.png'}: the disk is full")
    assert "the 1 file(s) this run had written were removed" in errors[-1]
    assert not (tmp_path / "out").exists()  # no annotated image, no temp file, no folder it made


def test_cli_predict_to_a_full_disk_is_one_line(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (9, 9, 9)).save(image)
    with open("/dev/full", "w") as full:
        proc = _run("predict", "efficientnet_b0", "--input-size", "32", image, stdout=full)
    _one_error_line(proc, "standard output", "the disk is full")


def test_an_unreadable_image_file_names_the_cause(tmp_path, monkeypatch):
    image = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(image)
    real_open = open

    def denied(file, mode="r", *args, **kwargs):
        if str(file) == str(image):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", denied)
    with pytest.raises(InputError, match=r"cannot read image .*a.png: permission denied"):
        load_image(image)


def test_a_symlink_loop_in_a_class_folder_is_not_followed(tmp_path):
    _folder(tmp_path / "data", n=3)
    root = tmp_path / "data" / "train"
    (root / "cat" / "loop").symlink_to("..")  # torchvision would walk back up into dog/ (and round again)
    _folder(tmp_path / "more", classes=("dog",), n=2)
    (root / "dog2").symlink_to(tmp_path / "more" / "train" / "dog")  # a linked class folder is a class as any other
    with pytest.warns(UserWarning, match=r"image\(s\) reached through symlinked folders inside class folders"):
        data = FolderDataset(root, lambda x: x)
    labels = [data.classes[label] for _, label in data.samples]
    assert sorted(labels) == ["cat"] * 3 + ["dog"] * 3 + ["dog2"] * 2
    assert not any("/loop/" in path for path, _ in data.samples)
