"""Detection data: COCO json loading and validation, box-aware transforms, the synthetic shapes
set, and COCO mAP (both backends)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from effml.data import shapes
from effml.data.coco import CocoDetection, collate_detection
from effml.data.det_transforms import detection_eval_transform, detection_train_transform
from effml.data.shapes import default_shapes_root, make_shapes_dataset
from effml.detection.coco_eval import METRIC_NAMES, evaluate_detections
from effml.errors import InputError

BACKENDS = ["pycocotools", "faster-coco-eval"]
# The tiny fixture holds one crowd box on purpose; its count warning is asserted where it matters.
pytestmark = pytest.mark.filterwarnings("ignore:.*crowd.*:UserWarning")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- COCO mAP


@pytest.mark.parametrize("backend", BACKENDS)
def test_automl_three_gt_two_detections_ap_two_thirds(backend):
    # google/automl efficientdet/coco_metric_test.py: 3 GT boxes over 3 classes,
    # 2 perfect detections -> AP 2/3, per class 1, 1, 0 (in percent here: 66.7, 100, 100, 0).
    # Non-contiguous ids check the label map.
    boxes = {2: [10, 10, 40, 20], 5: [50, 30, 30, 40], 9: [5, 50, 20, 25]}  # category id: xywh
    gt = {"images": [{"id": 5, "file_name": "a.png", "width": 100, "height": 80}],
          "categories": [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}, {"id": 9, "name": "c"}],
          "annotations": [{"id": k, "image_id": 5, "category_id": c, "bbox": b, "area": b[2] * b[3],
                           "iscrowd": 0} for k, (c, b) in enumerate(boxes.items(), start=1)]}
    dets = [(5, torch.tensor([[10.0, 10, 50, 30], [50, 30, 80, 70]]), torch.tensor([0.9, 0.8]),
             torch.tensor([0, 1]))]
    m = evaluate_detections(gt, dets, [2, 5, 9], backend=backend, per_class=True)
    assert set(METRIC_NAMES) <= set(m)
    assert m["AP"] == pytest.approx(200 / 3, abs=1e-2)
    assert m["AP50"] == pytest.approx(200 / 3, abs=1e-2) and m["AR100"] == pytest.approx(200 / 3, abs=1e-2)
    assert (m["AP/a"], m["AP/b"], m["AP/c"]) == pytest.approx((100.0, 100.0, 0.0), abs=1e-2)
    assert math.isnan(m["APl"])  # no large GT: COCO's -1, reported as NaN
    none = evaluate_detections(gt, [], [2, 5, 9], backend=backend)
    assert none["AP"] == 0.0 and none["AR100"] == 0.0
    with pytest.raises(InputError, match="image_id 6"):
        evaluate_detections(gt, [(6, dets[0][1], dets[0][2], dets[0][3])], [2, 5, 9], backend=backend)


def _random_fixture(seed=0, num_images=25, num_classes=4):
    rng = np.random.default_rng(seed)
    cats = [3, 8, 11, 20][:num_classes]
    images, anns, dets = [], [], []
    for i in range(1, num_images + 1):
        w, h = int(rng.integers(100, 400)), int(rng.integers(100, 400))
        images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, [w * 0.7, h * 0.7], (n, 2))
        wh = rng.uniform(4, [w * 0.3, h * 0.3], (n, 2))
        labels = rng.integers(0, num_classes, n)
        for b, lab in zip(np.concatenate([xy, wh], 1), labels):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cats[lab], "bbox": b.tolist(),
                         "area": float(b[2] * b[3]), "iscrowd": int(rng.random() < 0.05)})
        # Detections: jittered copies of the GT, sometimes the wrong class, plus false positives.
        jitter = rng.normal(0, 0.08, (n, 4)) * np.concatenate([wh, wh], 1)
        boxes = np.concatenate([xy, xy + wh], 1) + jitter
        fp = int(rng.integers(0, 5))
        fxy = rng.uniform(0, [w * 0.7, h * 0.7], (fp, 2))
        boxes = np.concatenate([boxes, np.concatenate([fxy, fxy + rng.uniform(4, 60, (fp, 2))], 1)])
        det_labels = np.concatenate([np.where(rng.random(n) < 0.1, rng.integers(0, num_classes, n), labels),
                                     rng.integers(0, num_classes, fp)])
        dets.append((i, boxes, rng.random(n + fp), det_labels))
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in cats]}
    return gt, dets, cats


def test_backends_agree_on_random_fixture():
    gt, dets, cats = _random_fixture()
    a = evaluate_detections(gt, dets, cats, backend="pycocotools")
    b = evaluate_detections(gt, dets, cats, backend="faster-coco-eval")
    assert 20 < a["AP"] < 95  # neither trivial nor hopeless, so agreement means something
    for name in METRIC_NAMES:
        assert a[name] == pytest.approx(b[name], abs=1e-2, nan_ok=True), name
    # The ground truth given as a json path reads the same.
    wrong = evaluate_detections(gt, [(i, bx, s, (lab + 1) % 4) for i, bx, s, lab in dets], cats)
    assert wrong["AP"] < a["AP"] / 2  # labels are really mapped through category_ids


def test_ground_truth_from_json_path(tmp_path):
    gt, dets, cats = _random_fixture(seed=1, num_images=6)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert evaluate_detections(path, dets) == pytest.approx(evaluate_detections(gt, dets, cats), nan_ok=True)


# ---------------------------------------------------------------- CocoDetection


def _write_image(path, w, h, colour=(90, 120, 150)):
    Image.new("RGB", (w, h), colour).save(path)


def _tiny_coco(tmp_path, **changes):
    """Three images (one without boxes) and a json with non-contiguous, unsorted category ids."""
    images = [{"id": 10, "file_name": "a.png", "width": 64, "height": 48},
              {"id": 11, "file_name": "b.png", "width": 32, "height": 40},
              {"id": 12, "file_name": "empty.png", "width": 50, "height": 50}]
    for im in images:
        _write_image(tmp_path / im["file_name"], im["width"], im["height"])
    data = {"images": images,
            "categories": [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}, {"id": 40, "name": "forty"}],
            "annotations": [
                {"id": 1, "image_id": 10, "category_id": 7, "bbox": [4, 6, 20, 10], "iscrowd": 0},
                {"id": 2, "image_id": 10, "category_id": 40, "bbox": [30, 20, 10, 12], "iscrowd": 0},
                {"id": 3, "image_id": 10, "category_id": 2, "bbox": [0, 0, 64, 48], "iscrowd": 1},
                {"id": 4, "image_id": 11, "category_id": 2, "bbox": [1, 2, 3, 4]}]}
    for key, value in changes.items():
        if key == "extra_annotation":
            data["annotations"].append(value)
        else:
            data[key] = value
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_detection_maps_categories_ignores_crowd_keeps_empty_images(tmp_path):
    ann = _tiny_coco(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(tmp_path, ann)
    assert ds.category_ids == (2, 7, 40) and ds.classes == ("two", "seven", "forty")
    assert ds.issues["crowd_boxes"] == 1 and sum(ds.issues.values()) == 1
    assert len(caught) == 1 and "crowd" in str(caught[0].message) and str(ann) in str(caught[0].message)
    assert len(ds) == 3 and ds.image_ids == (10, 11, 12)
    image, target, index = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.uint8 and index == 0
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 6, 24, 16], [30, 20, 40, 32]]))
    assert target["labels"].tolist() == [1, 2]  # ids 7, 40 -> indices in sorted order (2, 7, 40)
    assert target["image_id"] == 10 and target["orig_size"] == (48, 64) and target["scale"] == 1.0
    _, empty, _ = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert empty["boxes"].dtype == torch.float32 and empty["labels"].dtype == torch.int64
    gt = ds.coco_gt()  # crowd kept (COCO ignores matches to it), only this data set's images
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 1, 0]
    assert CocoDetection(tmp_path, ann, limit=1).coco_gt()["images"] == [gt["images"][0]]


def _bad(tmp_path, case):
    if case == "missing image id":
        return _tiny_coco(tmp_path, extra_annotation={"id": 99, "image_id": 42, "category_id": 2,
                                                      "bbox": [1, 1, 5, 5]})
    if case == "unknown category":
        return _tiny_coco(tmp_path, extra_annotation={"id": 98, "image_id": 10, "category_id": 5,
                                                      "bbox": [1, 1, 5, 5]})
    if case == "bad bbox":
        return _tiny_coco(tmp_path, extra_annotation={"id": 97, "image_id": 10, "category_id": 2,
                                                      "bbox": [1, 1, 5]})
    path = tmp_path / "annotations.json"
    if case == "empty file":
        path.write_text("")
    elif case == "invalid json":
        path.write_text('{"images": [')
    elif case == "no categories":
        path.write_text(json.dumps({"images": [], "annotations": []}))
    return path


@pytest.mark.parametrize("case, words", [
    ("missing image id", ["annotation id 99", "image_id 42", "no entry in 'images'"]),
    ("unknown category", ["annotation id 98", "category_id 5", "not in 'categories'"]),
    ("bad bbox", ["annotation id 97", "[x, y, width, height]"]),
    ("empty file", ["is empty"]),
    ("invalid json", ["not valid JSON", "line 1"]),
    ("no categories", ["'categories'"]),
])
def test_coco_detection_refuses_bad_json_with_named_errors(tmp_path, case, words):
    path = _bad(tmp_path, case)
    with pytest.raises(InputError) as info:
        CocoDetection(tmp_path, path)
    message = str(info.value)
    assert str(path) in message
    for w in words:
        assert w in message


def test_coco_detection_missing_image_files_error_or_skip(tmp_path):
    ann = _tiny_coco(tmp_path)
    (tmp_path / "b.png").unlink()
    with pytest.raises(InputError, match=r"1 of 3 image.*b\.png \(image id 11\).*on_missing='skip'"):
        CocoDetection(tmp_path, ann)
    with pytest.warns(UserWarning, match=r"skipped 1 image.*b\.png"):
        ds = CocoDetection(tmp_path, ann, on_missing="skip")
    assert ds.issues["missing_images"] == 1 and ds.image_ids == (10, 12)
    assert {a["image_id"] for a in ds.coco_gt()["annotations"]} == {10}
    with pytest.raises(InputError, match="does not exist"):
        CocoDetection(tmp_path / "nowhere", ann)


@pytest.mark.parametrize("bbox, issue, expected", [
    ([10, 10, 0, 5], "degenerate_boxes", None),
    ([10, 10, 5, -2], "degenerate_boxes", None),
    ([70, 10, 5, 5], "outside_boxes", None),  # image a.png is 64 x 48
    ([-4, 40, 20, 20], "clipped_boxes", [0.0, 40, 16, 48]),
])
def test_coco_detection_repairs_and_counts_bad_boxes(tmp_path, bbox, issue, expected):
    ann = _tiny_coco(tmp_path, extra_annotation={"id": 77, "image_id": 10, "category_id": 2, "bbox": bbox})
    with pytest.warns(UserWarning, match=r"annotation id 77 on image 10") as record:
        ds = CocoDetection(tmp_path, ann)
    assert str(ann) in str(record[0].message)
    assert ds.issues[issue] == 1
    boxes = ds[0][1]["boxes"]
    if expected is None:
        assert len(boxes) == 2
    else:
        assert len(boxes) == 3 and boxes[2].tolist() == expected


def test_coco_detection_file_size_must_match_json(tmp_path):
    ann = _tiny_coco(tmp_path)
    _write_image(tmp_path / "a.png", 30, 30)
    with pytest.raises(InputError, match=r"a\.png is 30x30 pixels.*64x48.*image id 10"):
        CocoDetection(tmp_path, ann)[0]


def test_coco_detection_ignores_exif_rotation(tmp_path):
    # COCO boxes live in the stored pixel grid; a JPEG's EXIF rotation must not turn the image.
    ann = _tiny_coco(tmp_path)
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, :8] = 255  # a white left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 to display"
    Image.fromarray(pixels).save(tmp_path / "a.png", exif=exif.tobytes())
    image, target, _ = CocoDetection(tmp_path, ann)[0]
    assert image.shape == (3, 48, 64) and target["orig_size"] == (48, 64)
    assert image[:, :, :8].float().mean() > 200 and image[:, :, 16:].float().mean() < 50


# ---------------------------------------------------------------- transforms


@settings(max_examples=25, deadline=None)
@given(w=st.integers(8, 300), h=st.integers(8, 300), size=st.sampled_from([64, 128, 160]),
       data=st.data())
def test_eval_transform_letterbox_maps_boxes_exactly(w, h, size, data):
    x1 = data.draw(st.floats(0, w - 2))
    y1 = data.draw(st.floats(0, h - 2))
    x2 = data.draw(st.floats(x1 + 1, w))
    y2 = data.draw(st.floats(y1 + 1, h))
    image = torch.full((3, h, w), 200, dtype=torch.uint8)
    box = torch.tensor([[x1, y1, x2, y2]])
    out = detection_eval_transform(size, MEAN, STD)((image, box, torch.tensor([1])))
    assert out.image.shape == (3, size, size) and out.labels.tolist() == [1]
    assert out.scale == pytest.approx(size / max(w, h), rel=1e-12)
    torch.testing.assert_close(out.boxes / out.scale, box, rtol=0, atol=1e-3)
    # Aspect kept: the image fills h*scale x w*scale (rounded up) at the top left, the rest is
    # padding (fill 0 -> -mean/std after normalising).
    content = (out.image[0] > 0)
    rows, cols = content.any(1).sum().item(), content.any(0).sum().item()
    assert abs(rows - h * out.scale) < 1 and abs(cols - w * out.scale) < 1
    assert max(rows, cols) == size


def test_train_transform_deterministic_per_sample_and_boxes_inside(tmp_path):
    root = make_shapes_dataset(tmp_path / "shapes", num_train=8, num_val=2, image_size=96)
    ds = CocoDetection(root / "train", root / "train" / "annotations.json",
                       detection_train_transform(64, MEAN, STD), seed=3)
    a = [ds[i] for i in range(len(ds))]
    b = [ds[i] for i in range(len(ds))]
    for (ia, ta, _), (ib, tb, _) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ta["boxes"], tb["boxes"]) and ta["scale"] == tb["scale"]
    ds.set_epoch(1)
    c = [ds[i] for i in range(len(ds))]
    assert any(x[1]["scale"] != y[1]["scale"] for x, y in zip(a, c))
    scales = set()
    for image, target, _ in a + c:
        boxes = target["boxes"]
        assert image.shape == (3, 64, 64) and len(boxes) == len(target["labels"])
        assert (boxes >= 0).all() and (boxes <= 64).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()  # empty/cut-away boxes dropped
        scales.add(target["scale"])
    assert len(scales) > 8  # the scale really is jittered
    images, targets, indices = collate_detection(a[:3])
    assert images.shape == (3, 3, 64, 64) and len(targets) == 3 and indices.tolist() == [0, 1, 2]


def test_hflip_maps_box_and_pixels():
    image = torch.zeros((3, 50, 100), dtype=torch.uint8)
    image[:, 10:30, 5:25] = 255  # the box [5, 10, 25, 30]
    flip = detection_train_transform(100, (0, 0, 0), (1, 1, 1), scale_range=(1.0, 1.0), hflip=1.0)
    out = flip((image, torch.tensor([[5.0, 10, 25, 30]]), torch.tensor([0])))
    torch.testing.assert_close(out.boxes, torch.tensor([[75.0, 10, 95, 30]]))
    assert out.image[0, 10:30, 75:95].min() == 1.0 and out.image[0, :50, :75].max() == 0.0
    assert out.image[0, 50:].max() == 0.0  # padding stays at the bottom
    keep = detection_train_transform(100, (0, 0, 0), (1, 1, 1), scale_range=(1.0, 1.0), hflip=0.0)
    torch.testing.assert_close(keep((image, torch.tensor([[5.0, 10, 25, 30]]), torch.tensor([0]))).boxes,
                               torch.tensor([[5.0, 10, 25, 30]]))


# ---------------------------------------------------------------- shapes


def test_shapes_deterministic_loadable_and_reused(tmp_path, monkeypatch):
    params = dict(num_train=40, num_val=6, image_size=64, seed=5, num_classes=3, max_objects=3)
    a = make_shapes_dataset(tmp_path / "a", **params)
    b = make_shapes_dataset(tmp_path / "b", **params)
    for split in ("train", "val"):
        assert (a / split / "annotations.json").read_bytes() == (b / split / "annotations.json").read_bytes()
    assert (a / "train" / "000007.png").read_bytes() == (b / "train" / "000007.png").read_bytes()
    other = make_shapes_dataset(tmp_path / "c", **{**params, "seed": 6})
    boxes = [json.loads((r / "train" / "annotations.json").read_text())["annotations"] for r in (a, other)]
    assert boxes[0] != boxes[1]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean data set: nothing to repair
        ds = CocoDetection(a / "train", a / "train" / "annotations.json",
                           detection_eval_transform(64, MEAN, STD))
    assert ds.category_ids == (1, 3, 7) and ds.classes == ("circle", "square", "triangle")
    assert len(ds) == 40
    labels = [ds.boxes_and_labels(i)[1] for i in range(len(ds))]
    counts = [len(x) for x in labels]
    assert max(counts) <= 3 and 0 in counts and sum(counts) > 30
    assert set(torch.cat(labels).tolist()) == {0, 1, 2}

    def no_generation(*args):
        raise AssertionError("regenerated an existing data set")

    monkeypatch.setattr(shapes, "_write_split", no_generation)
    assert make_shapes_dataset(tmp_path / "a", **params) == a  # reused, not rewritten
    with pytest.raises(InputError, match="other parameters"):
        make_shapes_dataset(tmp_path / "a", **{**params, "num_train": 41})


def test_shapes_ground_truth_round_trip_scores_full_ap(tmp_path):
    # Dataset -> letterbox -> boxes / scale -> COCO eval: perfect detections give AP 100%, so the
    # scale convention, the label map and the xywh conversion agree end to end.
    root = make_shapes_dataset(tmp_path / "s", num_train=2, num_val=16, image_size=80, num_classes=4)
    ds = CocoDetection(root / "val", root / "val" / "annotations.json",
                       detection_eval_transform(128, MEAN, STD))
    assert ds.category_ids == (1, 3, 7, 12)
    dets = []
    for _, t, _ in (ds[i] for i in range(len(ds))):
        dets.append((t["image_id"], t["boxes"] / t["scale"], torch.ones(len(t["boxes"])), t["labels"]))
    m = evaluate_detections(ds.coco_gt(), dets, ds.category_ids)
    assert m["AP"] == pytest.approx(100.0, abs=1e-4) and m["AR100"] == pytest.approx(100.0, abs=1e-4)


def test_shapes_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_on_val(folder, split, count, params):
        calls.append(split)
        if split == "val":
            raise KeyboardInterrupt
        folder.mkdir()

    monkeypatch.setattr(shapes, "_write_split", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        make_shapes_dataset(tmp_path / "s", num_train=2, num_val=2, image_size=64)
    assert calls == ["train", "val"] and list(tmp_path.iterdir()) == []


def test_default_shapes_root_uses_env_and_params(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFML_DATA_DIR", str(tmp_path))
    small, large = default_shapes_root(num_train=10), default_shapes_root(num_train=20)
    assert small.parent == tmp_path and small.name.startswith("shapes-") and small != large
    assert default_shapes_root(num_train=10) == small
    root = make_shapes_dataset(None, num_train=2, num_val=1, image_size=48)
    assert root == default_shapes_root(num_train=2, num_val=1, image_size=48) and root.parent == tmp_path
    assert (root / "val" / "annotations.json").is_file()
    monkeypatch.delenv("EFFML_DATA_DIR")
    assert default_shapes_root().parent == Path.home() / ".cache" / "effml"
