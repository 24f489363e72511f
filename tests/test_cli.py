"""The installed ``effml`` command, run in a subprocess as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _effml_cli import run_effml
from PIL import Image
from safetensors.torch import save_file

import effml

CLASS = 7  # the class the test checkpoint is rigged to predict


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return run_effml(args, cwd=cwd)


def _write_checkpoint(path: Path, name: str) -> None:
    """A timm-keyed state_dict, as a user would have from timm, whose top-1 is always CLASS."""
    torch.manual_seed(0)
    state = effml.create_model(name).state_dict()
    state["classifier.bias"] = torch.zeros(1000)
    state["classifier.bias"][CLASS] = 50.0
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    out = {
        "gray": d / "gray.png", "rgba": d / "rgba.png", "odd": d / "odd size.jpg",
        "text": d / "notes.jpg", "weights": d / "b0.safetensors",
    }
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), "L").save(out["gray"])
    Image.fromarray(rng.integers(0, 256, (33, 41, 4), dtype=np.uint8), "RGBA").save(out["rgba"])
    Image.fromarray(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)).save(out["odd"])
    out["text"].write_text("this is a text file, not a JPEG\n")
    _write_checkpoint(out["weights"], "efficientnet_b0")
    return out


def _no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- models


def test_models_pattern_table():
    proc = run("models", "mixnet_*", "--no-macs")
    assert proc.returncode == 0, proc.stderr
    for name in ("mixnet_s", "mixnet_m", "mixnet_l"):
        assert name in proc.stdout
    assert "efficientnet_b0" not in proc.stdout and "tf_mixnet_s" not in proc.stdout
    assert "params (M)" in proc.stdout and "MACs" not in proc.stdout


def test_models_json_counts_params_and_macs():
    proc = run("models", "efficientnet_b0", "--json")  # no wildcard: a substring
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == {"efficientnet_b0", "tf_efficientnet_b0"}
    b0 = rows["efficientnet_b0"]
    assert b0["family"] == "efficientnet" and b0["resolution"] == 224
    assert abs(b0["params"] - 5.3e6) < 0.05e6  # paper Table 2: 5.3M
    assert abs(b0["macs"] - 0.39e9) < 0.02e9  # paper Table 2: 0.39B FLOPs (multiply-adds)


def test_models_no_match():
    proc = run("models", "resnet*")
    assert proc.returncode != 0 and "resnet" in proc.stderr
    _no_traceback(proc)


# ---------------------------------------------------------------- predict


def test_predict_reports_bad_file_and_predicts_the_rest(files):
    images = [files["gray"], files["text"], files["rgba"], files["odd"]]
    proc = run("predict", "efficientnet_b0", *images, "--weights", files["weights"],
               "--top-k", "3", "--json")
    assert proc.returncode != 0
    assert "notes.jpg" in proc.stderr and "RANDOM" not in proc.stderr
    _no_traceback(proc)
    results = json.loads(proc.stdout)
    assert [Path(r["image"]).name for r in results] == [p.name for p in images]
    assert "error" in results[1] and "predictions" not in results[1]
    from torchvision.models import EfficientNet_B0_Weights

    label = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"][CLASS]
    for r in (results[0], results[2], results[3]):
        preds = r["predictions"]
        assert len(preds) == 3 and [p["rank"] for p in preds] == [1, 2, 3]
        assert preds[0]["index"] == CLASS and preds[0]["label"] == label
        assert preds[0]["prob"] > 0.99 and preds[0]["prob"] >= preds[1]["prob"] >= preds[2]["prob"]


def test_predict_without_weights_warns(files):
    proc = run("predict", "mixnet_s", files["odd"], "--top-k", "2", "--input-size", "64")
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM" in proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].endswith("odd size.jpg") and len(lines) == 3


@pytest.mark.parametrize("option, value, says", [
    ("--std", "0,1,1", "must be above 0"), ("--std", "nan,1,1", "finite"), ("--mean", "inf,0,0", "finite"),
    ("--std", "-1,1,1", "must be above 0"),
])
def test_predict_refuses_a_normalisation_that_is_no_number(files, option, value, says):
    proc = run("predict", "mixnet_s", files["odd"], "--input-size", "32", option, value)
    assert proc.returncode == 2 and says in proc.stderr and option in proc.stderr
    _no_traceback(proc)


def test_a_folder_or_file_that_is_no_model_is_named_as_such(files, tmp_path):
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    proc = run("predict", unfinished, files["odd"])
    assert proc.returncode == 2 and "is a folder but not a finished `effml train` run" in proc.stderr
    assert f"effml train --resume {unfinished}" in proc.stderr and "unknown model" not in proc.stderr
    proc = run("export", files["weights"], "--onnx", tmp_path / "x.onnx")  # a checkpoint given as the model
    assert proc.returncode == 2 and "is a file but not a spec JSON" in proc.stderr and "--weights" in proc.stderr
    assert not (tmp_path / "x.onnx").exists()
    _no_traceback(proc)


def test_predict_missing_weights_is_a_user_error(files, tmp_path):
    proc = run("predict", "efficientnet_b0", files["gray"], "--weights", tmp_path / "nope.safetensors")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "nope.safetensors" in proc.stderr
    _no_traceback(proc)


def test_predict_takes_a_spec_json_file_like_every_other_command(files, tmp_path):
    spec = effml.resolve_spec("efficientnet_b0", num_classes=10, resolution=32)
    (tmp_path / "ten.json").write_text(effml.spec_to_json(spec))
    proc = run("predict", tmp_path / "ten.json", files["odd"], "--top-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM" in proc.stderr and "ten.json" in proc.stderr
    preds = json.loads(proc.stdout)[0]["predictions"]
    assert [p["rank"] for p in preds] == [1, 2, 3] and all(0 <= p["index"] < 10 for p in preds)
    # with weights: the checkpoint's rigged classifier decides
    torch.manual_seed(0)
    state = effml.create_model(spec).state_dict()
    state["classifier.bias"] = torch.zeros(10)
    state["classifier.bias"][3] = 50.0
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "ten.safetensors"))
    proc = run("predict", tmp_path / "ten.json", files["odd"], "-w", tmp_path / "ten.safetensors", "--json")
    assert proc.returncode == 0 and "RANDOM" not in proc.stderr, proc.stderr
    top = json.loads(proc.stdout)[0]["predictions"][0]
    assert top["index"] == 3 and top["label"] == "3" and top["prob"] > 0.99


def test_predict_refuses_a_detector_and_names_detect(files):
    proc = run("predict", "tf_efficientdet_d0", files["odd"])
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: tf_efficientdet_d0 is a detection model")
    assert "effml detect tf_efficientdet_d0" in proc.stderr
    _no_traceback(proc)


# ---------------------------------------------------------------- bench, export


def test_bench_tiny_against_timm():
    args = ("bench", "mixnet_s", "--iters", "2", "--warmup", "1", "--input-size", "64",
            "--batch-sizes", "1,2", "--threads", "1", "--runtimes", "eager,fused")
    proc = run(*args, "--compare", "timm")
    assert proc.returncode == 0, proc.stderr
    for text in ("p50 (ms)", "p90 (ms)", "images/s", "ratio", "timm", "fastest effml", "BatchNorm folded"):
        assert text in proc.stdout
    assert "[1/2] eager: time at batch 1, 2" in proc.stderr and "[2/2] fused" in proc.stderr  # progress
    rows = [ln.split("│")[1:4] for ln in proc.stdout.splitlines() if ln.count("│") > 5]
    rows = [tuple(c.strip() for c in r) for r in rows if r[0].strip() in ("effml", "timm")]
    # timm has no BN-folding path: effml alone for `fused`; 2 libraries x 2 batches otherwise
    assert sorted(rows) == sorted([(lib, rt, b) for rt in ("eager", "fused") for b in "12"
                                   for lib in ("effml", "timm") if lib == "effml" or rt != "fused"])
    proc = run(*args[:-2], "--runtimes", "eager", "--json")
    assert [(r["library"], r["runtime"], r["batch_size"]) for r in json.loads(proc.stdout)] == [
        ("effml", "eager", 1), ("effml", "eager", 2)]
    proc = run("bench", "mixnet_s", "--compare", "keras")
    assert proc.returncode != 0 and "timm, torchvision, effdet" in proc.stderr


def test_export_then_onnxruntime_matches_pytorch(tmp_path):
    weights = tmp_path / "lite0.safetensors"
    _write_checkpoint(weights, "tf_efficientnet_lite0")
    out = tmp_path / "onnx" / "lite0.onnx"
    proc = run("export", "tf_efficientnet_lite0", "--onnx", out, "--weights", weights,
               "--input-size", "64")
    assert proc.returncode == 0, proc.stderr
    assert "max abs diff" in proc.stdout and str(out) in proc.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["lite0.onnx"]

    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    model = effml.create_model("tf_efficientnet_lite0", weights=weights).eval()
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # the ONNX file with a model of another class count: its labels would be wrong
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(image)
    proc = run("predict", "tf_efficientnet_lite0", image, "--onnx", out, "--num-classes", "10", "--input-size", "64")
    assert proc.returncode == 2 and "gives 1000 class scores but the model has 10 classes" in proc.stderr
    _no_traceback(proc)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(("command", "suggested"), [
    (["predict", "efficientnet_b9", "x.png"], "efficientnet_b0"),
    (["bench", "efficentnet_b0"], "efficientnet_b0"),
    (["export", "mixnet_x", "--onnx", "m.onnx"], "mixnet_s"),
])
def test_unknown_model_is_one_line_with_suggestions(command, suggested, tmp_path):
    proc = run(*command, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown model")
    assert "Did you mean" in proc.stderr and suggested in proc.stderr
    _no_traceback(proc)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["export"], ["bench"], ["search", "run"], ["train"]])
def test_help_names_every_option_in_full_at_80_columns(command):
    proc = run(*command, "--help")
    assert proc.returncode == 0 and "…" not in proc.stdout and "Usage: effml" in proc.stdout
    if command == ["export"]:
        assert "--calibration-images" in proc.stdout and "--holdout-images" in proc.stdout


# ---------------------------------------------------------------- bad input: runs, options, files


def _train_run(run_dir: Path, *args: str | Path) -> Path:
    """``effml train ARGS`` (a config file first, if any) for one step into ``run_dir``."""
    proc = run("train", *args, f"run.dir={run_dir}", "train.epochs=1", "train.max_steps=1", "train.ema_decay=null",
               "train.threads=1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A one-step digits run (10 classes) of a 20k-parameter network at 16 px."""
    from effml.spec import NetworkSpec, parse_arch

    d = tmp_path_factory.mktemp("tiny_run")
    spec = NetworkSpec(stages=parse_arch([["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r1_k3_s2_e4_c24_se0.25"]]),
                       stem_channels=16, head_channels=64, num_classes=10, resolution=16)
    (d / "tiny.json").write_text(effml.spec_to_json(spec))
    return _train_run(d / "run", f"model.name={d / 'tiny.json'}", "data.image_size=16", "data.batch_size=16",
                      "data.limit_train=32", "optim.name=adamw")


def _one_error_line(proc: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for part in parts:
        assert part in proc.stderr, part
    _no_traceback(proc)


@pytest.mark.parametrize("kind", ["int64", "nan"])
def test_weights_of_integers_or_nan_are_refused_naming_the_file(files, tiny_run, tmp_path, kind):
    from safetensors.torch import load_file

    state = load_file(str(tiny_run / "weights.safetensors"))
    bad = {k: (v.to(torch.int64) if kind == "int64" else torch.full_like(v, float("nan")))
           if v.is_floating_point() else v for k, v in state.items()}
    path = tmp_path / f"{kind}.safetensors"
    save_file(bad, str(path))
    proc = run("predict", tiny_run, files["odd"], "-w", path)  # printed 0.1000 (int64) or nan before
    _one_error_line(proc, str(path), "NaN or inf" if kind == "nan" else "(int64)", "left unchanged")
    assert proc.stdout == ""


def test_num_classes_other_than_the_runs_is_refused(files, tiny_run):
    proc = run("predict", tiny_run, files["odd"], "--num-classes", "5", "-k", "10", "--json")
    _one_error_line(proc, f"--num-classes 5: {tiny_run} is a run directory whose model has 10 classes",
                    "zoo names and spec JSON files")
    proc = run("predict", tiny_run, files["odd"], "--num-classes", "10", "-k", "10", "--json")  # its own: fine
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)[0]["predictions"]) == 10


def test_detect_refuses_num_classes_other_than_the_runs(tmp_path):
    root = Path(__file__).resolve().parents[1]
    run_dir = _train_run(tmp_path / "run", root / "configs" / "shapes_detection_scratch.yaml",
                         f"model.name={root / 'configs' / 'efficientdet_tiny.json'}", "detect.shapes_train=8",
                         "detect.shapes_val=4", "data.batch_size=4", "data.image_size=64",
                         "train.bn_recalibrate=0", f"data.root={tmp_path / 'shapes'}")
    image = min((tmp_path / "shapes" / "val").glob("*.png"))
    proc = run("detect", run_dir, image, "--num-classes", "5", "--out-dir", tmp_path / "out")
    _one_error_line(proc, f"--num-classes 5: {run_dir} is a run directory whose model has 3 classes")
    assert not (tmp_path / "out").exists()
    proc = run("detect", run_dir, image, "--num-classes", "3", "--out-dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("command", ["predict", "detect"])
def test_num_classes_below_one_is_a_usage_error(files, command, tmp_path):
    model = {"predict": "configs/efficientnet_digits.json", "detect": "configs/efficientdet_tiny.json"}[command]
    root = Path(__file__).resolve().parents[1]
    proc = run(command, root / model, files["odd"], "--num-classes", "0", cwd=tmp_path)  # printed nothing, exit 0
    assert proc.returncode == 2 and "--num-classes" in proc.stderr and proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # detect wrote no output folder
    _no_traceback(proc)


@pytest.mark.parametrize("command", ["predict", "detect"])
def test_an_unreadable_image_is_reported_and_skipped(files, tiny_run, command):
    """As a user (not root, who may read anything): typer's own readability check aborted the command."""
    import os
    import shutil
    import stat
    import tempfile

    from _effml_cli import EFFML, ENV

    as_user: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop to a user")
        as_user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)  # pytest's tmp_path is private to root: this folder is opened to everyone
        # a classifier run for predict; a detector spec (random weights) for detect
        model = (shutil.copytree(tiny_run, d / "run") if command == "predict"
                 else Path(__file__).resolve().parents[1] / "configs" / "efficientdet_tiny.json")
        good, bad = shutil.copy(files["odd"], d / "good.jpg"), shutil.copy(files["odd"], d / "bad.jpg")
        (d / "home").mkdir()
        for path in [d, *d.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o644)
        Path(bad).chmod(0)
        env = {**ENV, "HOME": str(d / "home")}
        extra = ["--out-dir", str(d / "home" / "out")] if command == "detect" else []
        proc = subprocess.run([*as_user, EFFML, command, str(model), str(good), str(bad), *extra],
                              capture_output=True, text=True, cwd=d, env=env, timeout=300, check=False)
        assert stat.S_IMODE(Path(bad).stat().st_mode) == 0
    assert proc.returncode == 1, proc.stderr
    assert f"error: cannot read image {bad}: permission denied" in proc.stderr
    assert "1 of 2 image(s) could not be read" in proc.stderr and "Usage:" not in proc.stderr
    assert str(good) in proc.stdout and str(bad) not in proc.stdout
    _no_traceback(proc)


def test_eval_refuses_zero_pgd_steps(tiny_run):
    proc = run("eval", tiny_run, "--pgd-epsilon", "1", "--pgd-steps", "0")  # reported pgd == clean before
    assert proc.returncode == 2 and "--pgd-steps must be 1 or more" in proc.stderr
    _no_traceback(proc)
