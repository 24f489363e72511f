"""COCO-format detection data: a JSON file of images, boxes and categories, validated with
messages that name the file and id, and served as (image, target, index) samples."""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from effml.data.datasets import AugmentedDataset
from effml.data.transforms import load_image
from effml.errors import InputError

DetectionSample = tuple[torch.Tensor, dict[str, Any], int]

# What the loader repairs instead of refusing, counted in ``CocoDetection.issues``.
ISSUE_TEXT = {
    "missing_images": "skipped {n} image(s) whose file is missing",
    "degenerate_boxes": "dropped {n} box(es) with zero or negative width/height",
    "clipped_boxes": "clipped {n} box(es) that extend past their image",
    "outside_boxes": "dropped {n} box(es) wholly outside their image",
    "crowd_boxes": "ignored {n} crowd (iscrowd=1) box(es) in the training targets",
}

_KEEP = object()  # ``CocoDetection.subset``: keep the data set's own transform

# EXIF orientation -> the PIL transpose that undoes ``ImageOps.exif_transpose`` (see _read_image).
_UNDO_EXIF = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_270}


class CocoDetection(AugmentedDataset):
    """Images of ``image_dir`` with the boxes of a COCO ``annotation_file``; labels are 0-based
    contiguous indices into ``classes`` (COCO ids in ``category_ids``, sorted).

    ``transform`` maps ``(image, boxes_xyxy, labels)`` to ``(image, boxes, labels, scale)`` (see
    ``effml.data.det_transforms``) and runs under the per-(seed, epoch, index) RNG. Missing image
    files raise, or with ``on_missing='skip'`` are left out and counted.
    """

    def __init__(self, image_dir: str | Path, annotation_file: str | Path,
                 transform: Callable | None = None, seed: int = 0, on_missing: str = "error",
                 limit: int | None = None) -> None:
        super().__init__(transform, seed)  # type: ignore[arg-type]
        if on_missing not in ("error", "skip"):
            raise InputError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.issues = {key: 0 for key in ISSUE_TEXT}
        self._examples: dict[str, str] = {}
        data = _read_coco_json(self.annotation_file)
        where = str(self.annotation_file)

        self.category_ids = tuple(sorted(_categories(data["categories"], where)))
        names = {c["id"]: str(c.get("name", c["id"])) for c in data["categories"]}
        self.classes = tuple(names[i] for i in self.category_ids)
        self._categories = [dict(c) for c in sorted(data["categories"], key=lambda c: c["id"])]
        label_of = {cid: i for i, cid in enumerate(self.category_ids)}

        images = _images(data["images"], where)
        anns_of: dict[int, list[dict]] = {image_id: [] for image_id in images}
        for k, ann in enumerate(data["annotations"]):
            ann = _check_annotation(ann, k, where)
            if ann["image_id"] not in images:
                raise InputError(f"{where}: {_ann_name(ann, k)} refers to image_id {ann['image_id']!r}, "
                                 f"which has no entry in 'images'; add the image entry or remove "
                                 f"the annotation")
            if ann["category_id"] not in label_of:
                raise InputError(f"{where}: {_ann_name(ann, k)} has category_id {ann['category_id']!r}, "
                                 f"which is not in 'categories' (ids {list(self.category_ids)[:20]}); "
                                 f"add the category or fix the annotation")
            cleaned = self._clean_box(ann, k, images[ann["image_id"]])
            if cleaned is not None:
                anns_of[ann["image_id"]].append(cleaned)

        if not self.image_dir.is_dir():
            raise InputError(f"image folder {self.image_dir} (for {where}) does not exist or is not a folder")
        ids = sorted(images)
        absent = _missing_files(self.image_dir, [images[i]["file_name"] for i in ids])
        missing = [i for i, gone in zip(ids, absent) if gone]
        if missing and on_missing == "error":
            shown = ", ".join(f"{images[i]['file_name']} (image id {i})" for i in missing[:5])
            raise InputError(f"{len(missing)} of {len(ids)} image(s) listed in {where} are missing from "
                             f"{self.image_dir}: {shown}{' ...' if len(missing) > 5 else ''}; check the "
                             f"image folder, or pass on_missing='skip' to leave them out")
        if missing and len(missing) == len(ids):
            raise InputError(f"all {len(ids)} image(s) listed in {where} are missing from {self.image_dir} "
                             f"(e.g. {images[missing[0]]['file_name']}); check that the image folder "
                             f"belongs to this annotation file")
        if missing:
            self.issues["missing_images"] = len(missing)
            self._examples["missing_images"] = f"{images[missing[0]]['file_name']} (image id {missing[0]})"
            gone = set(missing)
            ids = [i for i in ids if i not in gone]
        if limit is not None:
            ids = ids[:limit]

        self.image_ids = tuple(ids)
        self._images = [images[i] for i in ids]
        self._annotations = [anns_of[i] for i in ids]
        # Training targets: non-crowd boxes only (crowd regions are "ignore" in COCO, and
        # automl's / effdet's ``anchors.py`` mask them out of the loss; they stay in ``coco_gt`` for evaluation).
        self._boxes, self._labels = [], []
        for anns in self._annotations:
            kept = [a for a in anns if not a["iscrowd"]]
            boxes = np.array([_xywh_to_xyxy(a["bbox"]) for a in kept], dtype=np.float32).reshape(-1, 4)
            self._boxes.append(boxes)
            self._labels.append(np.array([label_of[a["category_id"]] for a in kept], dtype=np.int64))
        # Like the box counts, this describes the whole file (also images left out by limit).
        self.issues["crowd_boxes"] = sum(a["iscrowd"] for anns in anns_of.values() for a in anns)
        self._warn_issues()

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> DetectionSample:
        info = self._images[index]
        path = self.image_dir / info["file_name"]
        image = _read_image(path)
        if image.size != (info["width"], info["height"]):
            raise InputError(f"image {path} is {image.size[0]}x{image.size[1]} pixels but "
                             f"{self.annotation_file} says {info['width']}x{info['height']} (image id "
                             f"{info['id']}); fix the entry's width/height or the file")
        boxes, labels = self.boxes_and_labels(index)
        if self.transform is None:
            pixels, scale = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), 1.0
        else:
            pixels, boxes, labels, scale = self._augment((image, boxes, labels), index)  # type: ignore[misc]
        target = {"boxes": boxes.to(torch.float32), "labels": labels.to(torch.int64),
                  "image_id": int(info["id"]), "orig_size": (int(info["height"]), int(info["width"])),
                  "scale": float(scale)}
        return pixels, target, index

    def subset(self, indices: Sequence[int], transform: Callable | None | object = _KEEP) -> CocoDetection:
        """The samples at ``indices`` as a data set of their own, renumbered 0..n-1, read with
        ``transform`` (default: this one's); its ``coco_gt()`` holds only their images and
        annotations, so it is evaluated on its own (``data.holdout``). The file is not re-read."""
        bad = [i for i in indices if not 0 <= i < len(self)]
        if bad:
            raise InputError(f"{self.annotation_file}: subset indices {bad[:5]} are outside 0..{len(self) - 1}")
        out = copy.copy(self)
        if transform is not _KEEP:
            out.transform = transform
        out.image_ids = tuple(self.image_ids[i] for i in indices)
        for name in ("_images", "_annotations", "_boxes", "_labels"):
            setattr(out, name, [getattr(self, name)[i] for i in indices])
        out.issues, out._examples = dict(self.issues), dict(self._examples)
        return out

    def num_boxes(self) -> int:
        """Ground-truth boxes over this data set's images (crowd regions included)."""
        return sum(len(anns) for anns in self._annotations)

    def image_path(self, index: int) -> Path:
        """The file of sample ``index``."""
        return self.image_dir / self._images[index]["file_name"]

    def boxes_and_labels(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``index``'s training boxes (xyxy, original pixels) and labels, without reading the image."""
        return torch.from_numpy(self._boxes[index]), torch.from_numpy(self._labels[index])

    def coco_gt(self) -> dict[str, Any]:
        """This data set's ground truth as a COCO dict (its images only, cleaned boxes, crowd
        regions kept), for ``effml.detection.coco_eval.evaluate_detections``."""
        annotations = [dict(a) for anns in self._annotations for a in anns]
        ids = [a["id"] for a in annotations]
        if not all(_is_int(i) for i in ids) or len(set(ids)) < len(ids):
            # pycocotools indexes annotations by id: missing or repeated ids would merge boxes.
            for n, a in enumerate(annotations, start=1):
                a["id"] = n
        return {"images": [dict(i) for i in self._images], "annotations": annotations,
                "categories": [dict(c) for c in self._categories]}

    def _clean_box(self, ann: dict, k: int, image: dict) -> dict | None:
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:
            return self._count("degenerate_boxes", ann, k)
        width, height = image["width"], image["height"]
        x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            return self._count("outside_boxes", ann, k)
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            self._count("clipped_boxes", ann, k)
        area = ann.get("area")
        if not isinstance(area, (int, float)) or not area > 0:
            area = (x2 - x1) * (y2 - y1)  # COCO's own 'area' is the mask area: keep it when given
        return {"id": ann.get("id"), "image_id": ann["image_id"], "category_id": ann["category_id"],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area), "iscrowd": int(ann["iscrowd"])}

    def _count(self, issue: str, ann: dict, k: int) -> None:
        self.issues[issue] += 1
        self._examples.setdefault(issue, f"{_ann_name(ann, k)} on image {ann['image_id']}")
        return None

    def _warn_issues(self) -> None:
        parts = [ISSUE_TEXT[key].format(n=n) + f" (first: {self._examples[key]})"
                 if key in self._examples else ISSUE_TEXT[key].format(n=n)
                 for key, n in self.issues.items() if n]
        if parts:
            warnings.warn(f"{self.annotation_file}: " + "; ".join(parts), stacklevel=3)


def collate_detection(samples: Sequence[DetectionSample]) -> tuple[torch.Tensor, list[dict], torch.Tensor]:
    """Batch detection samples: (images [B, 3, S, S], targets, dataset indices [B])."""
    images = torch.stack([s[0] for s in samples])
    targets = [s[1] for s in samples]
    indices = torch.tensor([s[2] for s in samples], dtype=torch.long)
    return images, targets, indices


def _read_coco_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"annotation file {path} does not exist; give the path of a COCO-format json")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise InputError(f"annotation file {path} is empty; it should hold a COCO json object "
                         f"with 'images', 'annotations' and 'categories'")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"annotation file {path} is not valid JSON (line {e.lineno}, column {e.colno}: "
                         f"{e.msg}); was it cut short while copying?") from None
    if not isinstance(data, dict):
        raise InputError(f"annotation file {path} holds a JSON {type(data).__name__}, not a COCO object "
                         f"with 'images', 'annotations' and 'categories'")
    lacking = [key for key in ("images", "annotations", "categories") if not isinstance(data.get(key), list)]
    if lacking:
        raise InputError(f"annotation file {path} lacks the list(s) {lacking}; a COCO detection file "
                         f"has 'images', 'annotations' and 'categories' (an image-info or results "
                         f"file is not enough)")
    return data


def _categories(categories: list, where: str) -> list[int]:
    ids = []
    for k, c in enumerate(categories):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise InputError(f"{where}: categories[{k}] has no integer 'id' ({c!r:.80}); "
                             f"a category is {{'id': int, 'name': str}}")
        ids.append(c["id"])
    if not ids:
        raise InputError(f"{where}: 'categories' is empty; list the classes as {{'id': int, 'name': str}}")
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(f"{where}: category id(s) {dup} appear more than once in 'categories'")
    return ids


def _images(images: list, where: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for k, im in enumerate(images):
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            raise InputError(f"{where}: images[{k}] has no integer 'id' ({im!r:.80})")
        for key in ("width", "height"):
            if not _is_int(im.get(key)) or im[key] < 1:
                raise InputError(f"{where}: image id {im['id']} (images[{k}]) has no positive integer "
                                 f"{key!r}; COCO image entries need id, file_name, width and height")
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise InputError(f"{where}: image id {im['id']} (images[{k}]) has no 'file_name'")
        if im["id"] in out:
            raise InputError(f"{where}: image id {im['id']} appears more than once in 'images'")
        out[im["id"]] = {"id": im["id"], "file_name": im["file_name"],
                         "width": im["width"], "height": im["height"]}
    return out


def _check_annotation(ann: Any, k: int, where: str) -> dict:
    if not isinstance(ann, dict):
        raise InputError(f"{where}: annotations[{k}] is a {type(ann).__name__}, not an object")
    for key in ("image_id", "category_id"):
        if key not in ann:
            raise InputError(f"{where}: {_ann_name(ann, k)} has no {key!r}")
    bbox = ann.get("bbox")
    if (not isinstance(bbox, list) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in bbox)):
        raise InputError(f"{where}: {_ann_name(ann, k)} (image {ann['image_id']}) has bbox {bbox!r}; "
                         f"a COCO bbox is [x, y, width, height], four finite numbers in pixels")
    return {**ann, "bbox": [float(v) for v in bbox], "iscrowd": int(bool(ann.get("iscrowd", 0)))}


def _ann_name(ann: dict, k: int) -> str:
    return f"annotation id {ann['id']}" if "id" in ann else f"annotations[{k}]"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _xywh_to_xyxy(b: list[float]) -> list[float]:
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def _missing_files(image_dir: Path, names: list[str]) -> list[bool]:
    """For each file name under ``image_dir``: is the file absent?"""
    # One listing per folder instead of one stat per image (118k of them for COCO train2017).
    listings: dict[Path, frozenset[str]] = {}
    out = []
    for name in names:
        path = image_dir / name
        if path.parent not in listings:
            try:
                listings[path.parent] = frozenset(os.listdir(path.parent))
            except OSError:
                listings[path.parent] = frozenset()
        out.append(path.name not in listings[path.parent])
    return out


def _read_image(path: Path) -> Image.Image:
    # COCO boxes are in the file's stored pixel grid (pycocotools, torchvision and effdet all
    # ignore EXIF), while ``load_image`` rotates to the EXIF orientation, as a viewer shows it:
    # undo that rotation so that the boxes fit.
    image = load_image(path)  # raises InputError naming the file
    try:
        with warnings.catch_warnings():  # load_image has checked the size against effml's limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            raw = Image.open(path)
        with raw:
            orientation = raw.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        orientation = 1
    undo = _UNDO_EXIF.get(orientation)
    return image.transpose(undo) if undo is not None else image
