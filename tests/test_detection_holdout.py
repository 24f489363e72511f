"""data.holdout for detection data sets: a deterministic part of the training images kept out of
training, read with the eval transform and scored by COCO AP on their own annotations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from effml.data.coco import CocoDetection
from effml.detection.coco_eval import evaluate_detections
from effml.detection.ssdlite import SSDLiteSpec
from effml.errors import InputError
from effml.spec import NetworkSpec, parse_arch
from effml.spec.entry import Preprocess
from effml.train.config import load_config
from effml.train.data import build_datasets
from effml.train.engine import fit
from effml.train.trainer import Trainer

# 40 generated 64 px shapes images (train), 8 val; a 20% holdout is 8 of the 40.
SHAPES = ["data.dataset=shapes", "data.image_size=64", "data.batch_size=4", "detect.shapes_train=40",
          "detect.shapes_val=8", "detect.shapes_size=64", "train.threads=1", "train.ema_decay=null"]

# The smallest SSDLite: a 4-stage backbone (taps C4, C5) with thin extra maps.
TINY_BACKBONE = NetworkSpec(stages=parse_arch([["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e3_c16"], ["ir_r1_k3_s2_e3_c16"],
                                               ["ir_r1_k3_s2_e3_c24"], ["ir_r1_k3_s2_e3_c32"]]),
                            stem_channels=8, head_channels=32, num_classes=3, resolution=64)
TINY_SSDLITE = SSDLiteSpec(backbone=TINY_BACKBONE, extra_depths=(32, 16, 16, 16), num_classes=3, resolution=64)


def _cfg(tmp_path: Path, *overrides: str):
    return load_config(None, [*SHAPES, f"run.dir={tmp_path / 'run'}", *overrides])


def _ground_truth_detections(dataset: CocoDetection) -> list:
    """Every box of ``dataset`` detected exactly, with score 1 (original pixels, 0-based labels)."""
    gt = dataset.coco_gt()
    label = {cid: i for i, cid in enumerate(dataset.category_ids)}
    found = []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]).reshape(-1, 4)
        found.append((image["id"], boxes, torch.ones(len(anns)),
                      torch.tensor([label[a["category_id"]] for a in anns], dtype=torch.long)))
    return found


def test_the_holdout_is_a_deterministic_disjoint_part_of_train_with_its_own_ground_truth(tmp_path):
    bundle = build_datasets(_cfg(tmp_path, "data.holdout=0.2"), Preprocess(64, 0.875))
    train, held = bundle.train, bundle.holdout
    assert isinstance(train, CocoDetection) and isinstance(held, CocoDetection)
    assert (len(train), len(held)) == (32, 8) and len(bundle.val) == 8
    assert set(train.image_ids).isdisjoint(held.image_ids)
    assert train.annotation_file == held.annotation_file  # both from the training annotations
    again = build_datasets(_cfg(tmp_path, "data.holdout=0.2"), Preprocess(64, 0.875)).holdout
    assert again.image_ids == held.image_ids  # the same seed holds out the same images
    other = build_datasets(_cfg(tmp_path, "data.holdout=0.2", "train.seed=1"), Preprocess(64, 0.875)).holdout
    assert other.image_ids != held.image_ids

    gt = held.coco_gt()
    assert {im["id"] for im in gt["images"]} == set(held.image_ids)
    assert {a["image_id"] for a in gt["annotations"]} <= set(held.image_ids) and gt["annotations"]
    everything = json.loads(Path(held.annotation_file).read_text())
    assert len(gt["annotations"]) < len(everything["annotations"])

    # read with the eval transform: the same pixels every epoch, boxes in the letterboxed frame
    held.set_epoch(0)
    first = held[0]
    held.set_epoch(5)
    assert torch.equal(first[0], held[0][0]) and first[1]["image_id"] == held.image_ids[0]
    assert first[0].shape == (3, 64, 64)

    # AP on its own annotations: detecting exactly its boxes scores 100% (other training images,
    # undetected, would pull it down if they were in the ground truth)
    m = evaluate_detections(gt, _ground_truth_detections(held), held.category_ids)
    assert m["AP"] == pytest.approx(100.0) and m["AP50"] == pytest.approx(100.0)
    everything_gt = CocoDetection(held.image_dir, held.annotation_file).coco_gt()
    assert evaluate_detections(everything_gt, _ground_truth_detections(held), held.category_ids)["AP50"] < 50


def test_trainer_and_fit_report_holdout_ap(tmp_path):
    cfg = _cfg(tmp_path, "data.holdout=0.2", "train.max_steps=2", "train.epochs=1")
    t = Trainer(cfg, model=TINY_SSDLITE)
    held = t.evaluate("holdout")
    assert {"AP", "AP50", "AP75"} <= set(held) and held["count"] == 8
    assert 0.0 <= held["AP50"] <= 100.0
    rows = []
    result = fit(cfg, model=TINY_SSDLITE, write_run=False, quiet=True,
                 on_epoch=lambda epoch, row: rows.append(row) or False)
    assert result.holdout is not None and result.holdout["count"] == 8 and "AP50" in result.holdout
    assert rows and rows[-1]["holdout"]["AP50"] == result.holdout["AP50"]


@pytest.mark.parametrize("fraction, words", [
    ("0.001", "leaves 0 held out and 40 to train on"),  # round(40 * 0.001) = 0
    ("0.99", "leaves 40 held out and 0 to train on"),
    ("0.98", "1 images (after holding out 39 for data.holdout), fewer than data.batch_size=4"),
])
def test_impossible_detection_holdouts_are_clear_errors(tmp_path, fraction, words):
    with pytest.raises(InputError, match="data.holdout") as err:
        build_datasets(_cfg(tmp_path, f"data.holdout={fraction}"), Preprocess(64, 0.875))
    assert words in str(err.value)


def test_a_holdout_without_boxes_is_refused(tmp_path):
    for split in ("train", "val"):
        folder = tmp_path / "data" / split
        folder.mkdir(parents=True)
        images = []
        for i in range(8):
            Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(folder / f"{i}.png")
            images.append({"id": i + 1, "file_name": f"{i}.png", "width": 32, "height": 32})
        boxes = [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 2, 10, 10]}] if split == "val" else []
        (folder / "annotations.json").write_text(json.dumps(
            {"images": images, "annotations": boxes, "categories": [{"id": 5, "name": "thing"}]}))
    cfg = load_config(None, ["data.dataset=coco", f"data.root={tmp_path / 'data'}", "data.image_size=32",
                             "data.batch_size=2", "data.holdout=0.25"])
    with pytest.raises(InputError, match="no boxes among them: AP would be undefined; raise data.holdout"):
        build_datasets(cfg, Preprocess(32, 0.875))
