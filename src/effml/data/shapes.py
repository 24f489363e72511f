"""The embedded synthetic detection data set: filled shapes on textured backgrounds, generated
deterministically from a seed and written as a COCO folder (a "shapes" set like the toy one of
zylo117/Yet-Another-EfficientDet-Pytorch#381: small enough to train a small EfficientDet on a CPU in minutes)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from effml.errors import InputError
from effml.files import os_error

# (COCO category id, name). The ids are deliberately not 0..K-1 so that every user of the data
# set exercises the id -> contiguous label mapping (the off-by-one trap of google/automl#398).
SHAPE_CATEGORIES = ((1, "circle"), (3, "square"), (7, "triangle"), (12, "star"))
FORMAT_VERSION = 1  # bump when the generator's output changes: cached folders are then rebuilt
MARKER = ".effml-shapes.json"
SPLITS = ("train", "val")

# Object sizes as a fraction of the image's shorter side, drawn log-uniformly, so that at the
# default 192 px COCO's small (< 32^2 px), medium and large area ranges are all populated.
MIN_OBJECT, MAX_OBJECT = 0.12, 0.6
MAX_OVERLAP = 0.25  # at most this fraction of the smaller of two boxes may be covered


def shapes_params(num_train: int = 512, num_val: int = 128, image_size: int = 192, seed: int = 0,
                  num_classes: int = 3, max_objects: int = 4) -> dict[str, int]:
    """The generation parameters (validated), as stored in the folder's marker file."""
    if not 1 <= num_classes <= len(SHAPE_CATEGORIES):
        raise InputError(f"shapes num_classes must be 1..{len(SHAPE_CATEGORIES)}, got {num_classes}")
    if image_size < 32:
        raise InputError(f"shapes image_size must be at least 32 px, got {image_size}")
    if num_train < 1 or num_val < 1 or max_objects < 1:
        raise InputError(f"shapes needs num_train, num_val and max_objects >= 1, got "
                         f"{num_train}, {num_val}, {max_objects}")
    return {"version": FORMAT_VERSION, "num_train": num_train, "num_val": num_val,
            "image_size": image_size, "seed": seed, "num_classes": num_classes,
            "max_objects": max_objects}


def default_shapes_root(**params: int) -> Path:
    """Cache folder for a parameter set: ``$EFFML_DATA_DIR`` or ``~/.cache/effml``, then
    ``shapes-<hash of the parameters>``."""
    p = shapes_params(**params)
    digest = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]
    base = os.environ.get("EFFML_DATA_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "effml") / f"shapes-{digest}"


def make_shapes_dataset(root: str | Path | None = None, num_train: int = 512, num_val: int = 128,
                        image_size: int = 192, seed: int = 0, num_classes: int = 3,
                        max_objects: int = 4) -> Path:
    """Write (or reuse) ``root/{train,val}/*.png`` + ``annotations.json`` in COCO format; returns root.

    Images have a long side of ``image_size`` and a random aspect ratio, hold 0..``max_objects``
    shapes of ``num_classes`` classes, and depend only on (seed, split, index).
    """
    params = shapes_params(num_train, num_val, image_size, seed, num_classes, max_objects)
    root = Path(root) if root is not None else default_shapes_root(**{k: v for k, v in params.items()
                                                                      if k != "version"})
    if _is_complete(root, params):
        return root
    # Written next to its final place and renamed in one step, so an interrupted run leaves no
    # half-written data set under ``root`` (at worst a hidden temp folder).
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:
        cache = root.parent == default_shapes_root(**{k: v for k, v in params.items() if k != "version"}).parent
        what = "EFFML_DATA_DIR (the shapes cache; default ~/.cache/effml) or data.root" if cache else "data.root"
        raise os_error(err, "create the shapes data set in", root.parent,
                       f"set {what} to a folder you can write") from None
    try:
        for split, count in (("train", num_train), ("val", num_val)):
            _write_split(tmp / split, split, count, params)
        (tmp / MARKER).write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
        try:
            tmp.rename(root)
        except OSError:
            if not _is_complete(root, params):  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return False  # an empty folder is replaced by the rename
    marker = root / MARKER
    if not marker.is_file():
        raise InputError(f"{root} exists but is not an effml shapes data set (no {MARKER}); "
                         f"choose another folder or remove it")
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        found = None
    if found != params:
        raise InputError(f"{root} holds a shapes data set made with other parameters ({found}, "
                         f"wanted {params}); choose another folder or remove it")
    return True


def _write_split(folder: Path, split: str, count: int, params: dict[str, int]) -> None:
    folder.mkdir()
    categories = SHAPE_CATEGORIES[:params["num_classes"]]
    images, annotations = [], []
    for i in range(count):
        # One generator per image: an image does not depend on how many others there are.
        rng = np.random.default_rng([params["seed"], SPLITS.index(split), i])
        image, objects = _draw_image(rng, params["image_size"], categories, params["max_objects"])
        name = f"{i:06d}.png"
        image.save(folder / name, compress_level=1)  # fast; PNG keeps pixels exact
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "width": image.width, "height": image.height})
        for category_id, (x, y, w, h) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category_id, "bbox": [x, y, w, h],
                                "area": float(w * h), "iscrowd": 0})
    coco = {"info": {"description": f"effml synthetic shapes, {split} split", "params": params},
            "images": images, "annotations": annotations,
            "categories": [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in categories]}
    (folder / "annotations.json").write_text(json.dumps(coco, indent=None, separators=(",", ":")))


def _draw_image(rng: np.random.Generator, size: int, categories: tuple[tuple[int, str], ...],
                max_objects: int) -> tuple[Image.Image, list[tuple[int, tuple[int, int, int, int]]]]:
    short = int(round(size * rng.uniform(0.65, 1.0)))
    w, h = (size, short) if rng.random() < 0.5 else (short, size)
    background, base = _background(rng, h, w)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    boxes: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(0, max_objects + 1))):  # 0 objects: pure background images
        category_id, shape = categories[int(rng.integers(len(categories)))]
        for _attempt in range(20):
            side = int(round(min(w, h) * np.exp(rng.uniform(np.log(MIN_OBJECT), np.log(MAX_OBJECT)))))
            bw, bh = side, side
            if shape in ("triangle", "star"):  # a little aspect jitter where the name allows it
                bh = int(round(side * rng.uniform(0.8, 1.2)))
                bh = min(bh, h)
            x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = (x, y, bw, bh)
            if all(_covered(box, other) <= MAX_OVERLAP for other in boxes):
                break
        else:
            continue  # no room left for this object
        _draw_shape(draw, shape, box, _object_colour(rng, base), rng)
        boxes.append(box)
        objects.append((category_id, box))
    return image, objects


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A noise, gradient or stripes texture (uint8 [h, w, 3]) and its mean colour."""
    c1 = rng.uniform(30, 225, 3)
    c2 = np.clip(c1 + rng.uniform(-60, 60, 3), 0, 255)
    kind = int(rng.integers(3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    if kind == 0:  # noise
        t = np.zeros((h, w), np.float32)
        sigma = rng.uniform(10, 35)
    elif kind == 1:  # linear gradient
        t = (along - along.min()) / max(float(along.max() - along.min()), 1.0)
        sigma = rng.uniform(2, 10)
    else:  # stripes
        period = rng.uniform(6, 24)
        t = (np.floor(along / (period / 2)) % 2).astype(np.float32)
        sigma = rng.uniform(2, 10)
    pixels = c1 + (c2 - c1) * t[..., None] + rng.normal(0, sigma, (h, w, 3))
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return pixels, pixels.reshape(-1, 3).mean(axis=0)


def _object_colour(rng: np.random.Generator, base: np.ndarray) -> tuple[int, int, int]:
    # Far enough from the background's mean colour to be visible (a learnable set, not a puzzle).
    for _ in range(50):
        colour = rng.integers(0, 256, 3)
        if np.linalg.norm(colour - base) > 120:
            break
    else:
        colour = 255 - base.astype(np.int64)
    return tuple(int(c) for c in colour)  # type: ignore[return-value]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int],
                colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    # PIL's coordinates are pixel indices, inclusive: a shape from x to x + w - 1 covers the
    # continuous interval [x, x + w), which is the COCO box [x, y, w, h].
    x, y, w, h = box
    x2, y2 = x + w - 1, y + h - 1
    if shape == "circle":
        draw.ellipse([x, y, x2, y2], fill=colour)
    elif shape == "square":
        draw.rectangle([x, y, x2, y2], fill=colour)
    elif shape == "triangle":
        if rng.random() < 0.5:  # apex up or down: same box, two looks
            points = [(x, y2), (x2, y2), ((x + x2) / 2, y)]
        else:
            points = [(x, y), (x2, y), ((x + x2) / 2, y2)]
        draw.polygon(points, fill=colour)
    elif shape == "star":
        draw.polygon(_star(x, y, x2, y2), fill=colour)
    else:  # pragma: no cover - SHAPE_CATEGORIES and this function change together
        raise ValueError(shape)


def _star(x1: float, y1: float, x2: float, y2: float) -> list[tuple[float, float]]:
    # A five-pointed star, stretched so that its outer points touch all four sides of the box.
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    px, py = radius * np.cos(angles), radius * np.sin(angles)
    px = x1 + (px - px.min()) / (px.max() - px.min()) * (x2 - x1)
    py = y1 + (py - py.min()) / (py.max() - py.min()) * (y2 - y1)
    return list(zip(px.tolist(), py.tolist()))


def _covered(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min(a[2] * a[3], b[2] * b[3])

