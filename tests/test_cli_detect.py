"""``effml detect`` / ``export`` / ``eval`` / ``models`` / ``bench`` on detectors, run in a
subprocess as a user runs them, with the tiny EfficientDet of configs/efficientdet_tiny.json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _effml_cli import run_effml
from PIL import Image

import effml

TINY_SPEC = Path(__file__).resolve().parents[1] / "configs" / "efficientdet_tiny.json"
RIGGED = 1  # the class the test checkpoint is rigged to detect everywhere
NAMES = ("circle", "square", "triangle")


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_effml(args, cwd=cwd)


def _no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout


def _tiny_detector() -> torch.nn.Module:
    from effml.zoo import load_spec

    torch.manual_seed(0)
    return effml.create_model(load_spec(TINY_SPEC)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from effml.models.weights import save_weights

    d = tmp_path_factory.mktemp("detect")
    rng = np.random.default_rng(0)
    out = {"wide": d / "wide.jpg", "tall": d / "tall.png", "text": d / "notes.jpg",
           "weights": d / "tiny.safetensors", "names": d / "names.txt"}
    Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)).save(out["wide"])
    Image.fromarray(rng.integers(0, 256, (200, 120), dtype=np.uint8), "L").save(out["tall"])
    out["text"].write_text("this is a text file, not a JPEG\n")
    out["names"].write_text("\n".join(NAMES) + "\n")
    model = _tiny_detector()
    # Class logits are anchor-major ([A, C] per location): a large bias on RIGGED's channel of
    # every anchor makes every anchor score ~1 for it and ~0 for the others.
    bias = model.class_net.predict.conv_pw.bias
    with torch.no_grad():
        bias.fill_(-8.0)
        bias.view(-1, len(NAMES))[:, RIGGED] = 8.0
    save_weights(model, out["weights"])
    return out


# ---------------------------------------------------------------- detect


def test_detect_writes_json_and_annotated_images_and_reports_bad_file(files, tmp_path):
    out = tmp_path / "out"
    images = [files["wide"], files["text"], files["tall"]]
    proc = run("detect", TINY_SPEC, *images, "--weights", files["weights"], "--classes", files["names"],
               "--max-detections", "5", "--out-dir", out)
    assert proc.returncode == 1, proc.stderr
    assert "notes.jpg" in proc.stderr and "1 of 3 image(s)" in proc.stderr
    assert "RANDOM" not in proc.stderr
    _no_traceback(proc)
    assert "square" in proc.stdout and "wide.jpg" in proc.stdout

    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "tall.png", "wide.png"]  # no temp files
    results = json.loads((out / "detections.json").read_text())
    assert [Path(r["image"]).name for r in results] == [p.name for p in images]
    assert "error" in results[1] and "detections" not in results[1]
    for r, (w, h) in ((results[0], (160, 90)), (results[2], (120, 200))):
        assert (r["width"], r["height"]) == (w, h)
        dets = r["detections"]
        assert 1 <= len(dets) <= 5
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 0.3
        for d in dets:
            assert set(d) == {"box", "score", "label", "class", "category_id"}
            assert d["label"] == RIGGED and d["class"] == NAMES[RIGGED] and d["category_id"] is None
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        annotated = Image.open(r["annotated"])
        assert annotated.size == (w, h) and annotated.format == "PNG"
        original = np.asarray(Image.open(r["image"]).convert("RGB"))
        assert (np.asarray(annotated.convert("RGB")) != original).any()  # boxes were drawn


def test_detect_coco_model_names_and_ids(files, tmp_path):
    proc = run("detect", "tf_efficientdet_d0", files["wide"], "--input-size", "128",
               "--score-threshold", "0", "--max-detections", "20", "--out-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM" in proc.stderr
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    coco = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]  # index = COCO id
    dets = json.loads((tmp_path / "detections.json").read_text())[0]["detections"]
    assert len(dets) == 20
    for d in dets:
        assert d["category_id"] == d["label"] + 1
        name = coco[d["category_id"]]
        assert d["class"] == (name if name != "N/A" else f"class_{d['label']}")


def test_detect_refuses_classification_model_and_takes_any_size(files, tmp_path):
    proc = run("detect", "efficientnet_b0", files["wide"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "classification model" in proc.stderr and "effml predict efficientnet_b0" in proc.stderr
    assert "RANDOM" not in proc.stderr  # refused before building it
    _no_traceback(proc)
    assert list(tmp_path.iterdir()) == []

    # Not a multiple of the coarsest stride: feature and anchor grids follow the input (as automl).
    proc = run("detect", TINY_SPEC, files["wide"], "--weights", files["weights"], "--input-size", "100",
               "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "detections.json").read_text())[0]["width"] > 0


# ---------------------------------------------------------------- export, models, bench


def test_export_tiny_detector_verified_with_onnxruntime(files, tmp_path):
    out = tmp_path / "tiny.onnx"
    proc = run("export", TINY_SPEC, "--weights", files["weights"], "--onnx", out)
    assert proc.returncode == 0, proc.stderr
    assert "verified with ONNX Runtime: max abs diff" in proc.stdout and str(out) in proc.stdout
    assert "NMS are not in the graph" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]

    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["class_p3", "class_p4", "class_p5", "box_p3", "box_p4", "box_p5"]
    x = torch.randn(2, 3, 128, 128)
    got = session.run(None, {"input": x.numpy()})
    model = _tiny_detector()
    effml.models.weights.load_weights(model, files["weights"])
    with torch.inference_mode():
        cls_out, box_out = model(x)
    for g, e in zip(got, [*cls_out, *box_out], strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4, rtol=0)


def test_models_task_filter():
    proc = run("models", "*0", "--task", "detect", "--no-macs")  # '*0' matches b0 and d0 alike
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[1] for line in proc.stdout.splitlines() if "efficient" in line}
    assert {"tf_efficientdet_d0", "efficientdet_lite0"} <= names
    assert "efficientnet_b0" not in names and "tf_efficientnet_lite0" not in names
    assert "task" in proc.stdout and "detect" in proc.stdout and "classify" not in proc.stdout


def test_bench_detector_times_the_network():
    proc = run("bench", "tf_efficientdet_d0", "--input-size", "128", "--runtimes", "eager",
               "--iters", "1", "--warmup", "0", "--batch-sizes", "1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "eager" in proc.stdout and "images/s" in proc.stdout


# ---------------------------------------------------------------- a detection run: eval, detect


def test_detection_run_eval_and_detect(tmp_path):
    run_dir = tmp_path / "run"
    proc = run("train", Path(__file__).resolve().parents[1] / "configs" / "shapes_detection_scratch.yaml",
               f"model.name={TINY_SPEC}", "train.epochs=1", "detect.shapes_train=16",
               "detect.shapes_val=8", "data.batch_size=8", f"data.root={tmp_path / 'shapes'}",
               f"run.dir={run_dir}", "--quiet")
    assert proc.returncode == 0, proc.stderr
    info = json.loads((run_dir / "run.json").read_text())
    assert info["task"] == "detect" and info["metric_unit"] == "percent"  # COCO AP/AR in percent

    proc = run("eval", run_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    coco = result["coco"]
    assert coco["count"] == 8
    for key in ("AP", "AP50", "AP75", "AR100"):  # the numbers training reported for these weights
        assert coco[key] == pytest.approx(info["ema_val"][key], abs=1e-9)

    # the exported model on the same val set: fp32 ONNX gives training's figures, int8 its own
    onnx, int8 = tmp_path / "det.onnx", tmp_path / "det.int8.onnx"
    proc = run("export", run_dir, "--onnx", onnx, "--atol", "0.01")  # outputs up to ~75 after training
    assert proc.returncode == 0, proc.stderr
    proc = run("export", run_dir, "--onnx", int8, "--int8", "--min-agreement", "0", "--no-fallback", "--atol", "0.01")
    assert proc.returncode == 0, proc.stderr
    for path in (onnx, int8):
        proc = run("eval", run_dir, "--onnx", path, "--json")
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        assert got["weights"] == str(path) and got["coco"]["count"] == 8
        if path == onnx:
            assert got["coco"]["AP50"] == pytest.approx(coco["AP50"], abs=0.05)
    proc = run("eval", run_dir, "--onnx", onnx, "--pgd-epsilon", "2")
    assert proc.returncode == 2 and "without --onnx" in proc.stderr

    proc = run("eval", run_dir, "--pgd-epsilon", "2")
    assert proc.returncode == 2 and "detection run" in proc.stderr
    _no_traceback(proc)
    for option, value in (("--pgd-epsilon", "nan"), ("--pgd-epsilon", "-1"), ("--pgd-step-size", "0")):
        proc = run("eval", run_dir, "--pgd-epsilon", "2", option, value)  # refused before the run is read
        assert proc.returncode == 2 and f"{option} must be a finite number" in proc.stderr
        _no_traceback(proc)

    image = sorted((tmp_path / "shapes" / "val").glob("*.png"))[0]
    proc = run("detect", run_dir, image, "--score-threshold", "0", "--max-detections", "3",
               "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM" not in proc.stderr
    dets = json.loads((tmp_path / "out" / "detections.json").read_text())[0]["detections"]
    assert len(dets) == 3
    for d in dets:
        assert d["class"] == info["classes"][d["label"]]
        assert d["category_id"] == info["category_ids"][d["label"]]


# ---------------------------------------------------------------- the library's ImageDetector


def test_image_detector_maps_boxes_back_to_each_picture(files):
    """What `effml detect` runs, from Python: pictures of any size in one batch, boxes in each
    picture's own pixels (inside it, not in the letterbox padding)."""
    from effml.data import load_image
    from effml.deploy import ImageDetector
    from effml.models.weights import load_weights
    from effml.spec.entry import Preprocess

    model = _tiny_detector()
    load_weights(model, files["weights"])
    size = load_spec_resolution()
    detector = ImageDetector(model, Preprocess(size, 1.0, (0.5,) * 3, (0.25,) * 3, "bilinear"),
                             score_threshold=0.5, max_detections=20)
    wide, tall = load_image(files["wide"]), load_image(files["tall"])
    both = detector([wide, tall])
    assert detector([]) == []
    for picture, found in zip((wide, tall), both):
        assert 0 < len(found.boxes) <= 20 and set(found.labels.tolist()) == {RIGGED}
        b = found.boxes
        assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= picture.width).all()
        assert (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= picture.height).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    # every anchor fires (the rigged bias): the tall picture fills the letterbox's height, so its
    # boxes reach below the wide picture's height, whose own stop at it (the padding is not its)
    assert both[1].boxes[:, 3].max() > wide.height


def load_spec_resolution() -> int:
    from effml.zoo import load_spec

    return load_spec(TINY_SPEC).resolution
