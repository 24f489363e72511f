"""COCO box mAP (the 12 standard numbers) with pycocotools, or faster-coco-eval behind a flag."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from effml.errors import InputError

# The order of COCOeval.stats (pycocotools' summarize; faster-coco-eval's first 12 agree).
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "faster-coco-eval")

Detection = tuple[int, Any, Any, Any]  # (image_id, boxes xyxy [N, 4], scores [N], labels [N] 0-based)


def evaluate_detections(coco_gt: dict | str | Path, detections: Iterable[Detection],
                        category_ids: Sequence[int] | None = None, backend: str = "pycocotools",
                        per_class: bool = False) -> dict[str, float]:
    """COCO bbox AP/AR in percent (0-100): ``{'AP', 'AP50', ..., 'ARl'}`` (plus ``'AP/<class name>'``
    with ``per_class``); NaN where COCO reports -1 (no ground truth in that area range).

    Percent, as the papers (EfficientDet-D0 33.8 AP) and detectron2's ``COCOEvaluator`` report
    COCO metrics, and as effml reports top-1: pycocotools' ``stats`` are fractions, scaled here.

    ``coco_gt``: ``CocoDetection.coco_gt()`` or a COCO json path; every image in it counts, with
    or without detections. ``detections``: per image, boxes xyxy in the ORIGINAL image's pixels,
    scores, and 0-based labels mapped through ``category_ids`` (default: the sorted COCO ids).
    """
    if backend not in BACKENDS:
        raise InputError(f"COCO evaluation backend {backend!r} is unknown; use one of {BACKENDS}")
    gt = _ground_truth(coco_gt)
    if category_ids is None:
        category_ids = sorted(c["id"] for c in gt["categories"])
    results = _results(gt, detections, list(category_ids))

    quiet = contextlib.redirect_stdout(io.StringIO())  # pycocotools prints every step
    with quiet:
        if backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval as Evaluator
            extra: dict[str, Any] = {}
        else:
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as Evaluator
            extra = {"print_function": _silent}
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        if results:
            dt = coco.loadRes(results)
        else:  # loadRes cannot take an empty list (pycocotools indexes results[0])
            dt = COCO()
            dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            dt.createIndex()
        evaluator = Evaluator(coco, dt, "bbox", **extra)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: _percent(v) for name, v in zip(METRIC_NAMES, evaluator.stats[:12])}
    if per_class:
        # precision is [IoU, recall, class, area, maxDets]; area 'all', maxDets 100, as automl's
        # per-class ``AP_/name`` (google/automl efficientdet/coco_metric.py).
        precision = np.asarray(evaluator.eval["precision"])
        names = {c["id"]: str(c.get("name", c["id"])) for c in gt["categories"]}
        for k, cid in enumerate(evaluator.params.catIds):
            p = precision[:, :, k, 0, -1]
            metrics[f"AP/{names[cid]}"] = _percent(float(p[p > -1].mean())) if (p > -1).any() else math.nan
    return metrics


def coco_subset(coco_gt: dict, image_ids: Iterable[int]) -> dict:
    """The ground truth of the images ``image_ids`` only (every category kept): evaluating a few
    images of a set, e.g. one held-out batch."""
    keep = set(image_ids)
    return {"images": [i for i in coco_gt["images"] if i["id"] in keep],
            "annotations": [a for a in coco_gt["annotations"] if a["image_id"] in keep],
            "categories": coco_gt["categories"]}


def _ground_truth(coco_gt: dict | str | Path) -> dict:
    if isinstance(coco_gt, (str, Path)):
        path = Path(coco_gt)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"ground-truth file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise InputError(f"ground-truth file {path} is not valid JSON ({e})") from None
        where = str(path)
    else:
        data, where = coco_gt, "the ground truth"
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise InputError(f"{where} is not a COCO detection object with 'images', 'annotations' "
                         f"and 'categories'; pass CocoDetection.coco_gt() or a COCO json path")
    # Copies: COCOeval writes 'ignore' into the annotation dicts it is given. pycocotools needs
    # 'iscrowd', 'area' and unique ids, which hand-written files sometimes lack.
    annotations = []
    for n, a in enumerate(data["annotations"], start=1):
        a = dict(a)
        a["id"] = n
        a.setdefault("iscrowd", 0)
        if "area" not in a:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
        annotations.append(a)
    return {"images": [dict(i) for i in data["images"]], "annotations": annotations,
            "categories": [dict(c) for c in data["categories"]]}


def _results(gt: dict, detections: Iterable[Detection], category_ids: list[int]) -> list[dict]:
    image_ids = {im["id"] for im in gt["images"]}
    known = {c["id"] for c in gt["categories"]}
    unknown = [c for c in category_ids if c not in known]
    if unknown:
        raise InputError(f"category_ids {unknown} are not categories of the ground truth "
                         f"(ids {sorted(known)[:20]}); pass the data set's category_ids")
    cat = np.asarray(category_ids, dtype=np.int64)
    results: list[dict] = []
    for image_id, boxes, scores, labels in detections:
        image_id = int(image_id)
        boxes = _array(boxes).reshape(-1, 4)
        scores, labels = _array(scores).reshape(-1), _array(labels).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise InputError(f"detections for image {image_id}: {len(boxes)} boxes, {len(scores)} scores "
                             f"and {len(labels)} labels; they must be equally many")
        if not len(boxes):
            continue
        if image_id not in image_ids:
            raise InputError(f"detections name image_id {image_id}, which is not in the ground truth "
                             f"({len(image_ids)} images); evaluate against the same data set's coco_gt()")
        labels = labels.astype(np.int64)
        if labels.min() < 0 or labels.max() >= len(cat):
            raise InputError(f"detections for image {image_id} have label {int(labels.max())}, outside "
                             f"0..{len(cat) - 1}; labels are 0-based indices into category_ids")
        # COCO results are [x, y, width, height] with the data set's own category ids.
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
        for box, score, cid in zip(xywh.tolist(), scores.astype(np.float64).tolist(), cat[labels].tolist()):
            results.append({"image_id": image_id, "category_id": cid, "bbox": box, "score": score})
    return results


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _percent(v: float) -> float:
    """A COCOeval figure (a fraction, -1 for "no ground truth") in percent, NaN for -1."""
    return math.nan if v < 0 else 100 * float(v)


def _silent(*args: Any, **kwargs: Any) -> None:
    return None
