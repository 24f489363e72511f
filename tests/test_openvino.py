"""OpenVINO as an optional runtime: the IR that ``export_openvino`` / ``effml export --openvino``
writes gives PyTorch's outputs, ``OpenVinoRunner`` stands in for the network in predict and detect as
``OnnxRunner`` does, ``benchmark`` times it, and a missing install names the extra to install."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _effml_cli import run_effml
from PIL import Image
from torch import nn

import effml
from effml.deploy.benchmark import benchmark, default_runtimes
from effml.deploy.image_detector import ImageDetector
from effml.deploy.onnx_export import export_onnx
from effml.deploy.openvino_runtime import OpenVinoRunner, export_openvino
from effml.measure.openvino import openvino_available
from effml.errors import InputError
from effml.spec.entry import Preprocess
from effml.zoo import load_spec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
EXTRA = r'pip install "effml\[openvino\]"'
# ``pytest.importorskip("openvino")`` would import OpenVINO with its telemetry on; effml's loader
# imports it without (effml.measure.openvino.load_openvino), so the skip asks that loader.
needs_openvino = pytest.mark.skipif(not openvino_available(), reason='OpenVINO is not installed: '
                                                                      'pip install "effml[openvino]"')


def _images(n: int, seed: int, size: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> tuple[nn.Module, Path]:
    """A zoo classifier (EfficientNet-Lite0, 10 classes) at 32 px, exported to ONNX and to the IR."""
    torch.manual_seed(0)
    model = effml.create_model("tf_efficientnet_lite0", num_classes=10).eval()
    onnx_path = tmp_path_factory.mktemp("openvino") / "lite0.onnx"
    export_onnx(model, onnx_path, input_size=32)
    return model, onnx_path


# ---------------------------------------------------------------- the IR and the runner


@needs_openvino
def test_the_ir_of_a_classifier_gives_pytorch_s_outputs(classifier):
    model, onnx_path = classifier
    report = export_openvino(model, onnx_path, batch_size=3)
    xml, weights = onnx_path.with_suffix(".xml"), onnx_path.with_suffix(".bin")
    assert (report.path, report.weights) == (xml, weights) and report.max_abs_diff <= 1e-4
    assert sorted(p.name for p in onnx_path.parent.iterdir()) == ["lite0.bin", "lite0.onnx", "lite0.xml"]
    assert 'element_type="f16"' not in xml.read_text()  # fp32 weights, not save_model's fp16 default
    assert report.size_bytes > 0.9 * onnx_path.stat().st_size

    runner = OpenVinoRunner(xml, threads=1)
    assert not runner.is_detector and runner.input_shape[1:] == (3, 32, 32) and runner.input_shape[0] is None
    x = _images(3, 5, 32)
    with torch.inference_mode():
        expected = model(x)
    got = runner(x)
    assert isinstance(got, torch.Tensor) and got.shape == (3, 10)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # the ONNX file itself runs the same graph
    torch.testing.assert_close(OpenVinoRunner(onnx_path, threads=1)(x), got, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match=r"OpenVINO model .*lite0.xml takes input 3x32x32 .* 3x40x40"):
        runner.check_input(3, 40, 40)
    with pytest.raises(InputError, match=r"OpenVINO model .*gives 10 class scores but the model has 7"):
        runner.check_classes(7)
    runner.check_input(3, 32, 32)
    runner.check_classes(10)


@needs_openvino
def test_a_missing_or_broken_model_file_is_a_user_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        OpenVinoRunner(tmp_path / "nope.xml")
    (tmp_path / "bad.xml").write_text("<net>not an IR")
    with pytest.raises(InputError, match="OpenVINO cannot load .*bad.xml"):
        OpenVinoRunner(tmp_path / "bad.xml")


@needs_openvino
def test_openvino_loads_only_when_used_and_without_its_telemetry():
    # effml makes no network access at run time: OpenVINO's usage reports (openvino_telemetry) stay unloaded
    code = ("import sys, effml.deploy, effml.cli.main\n"
            "assert 'openvino' not in sys.modules\n"
            "from effml.measure.openvino import load_openvino\n"
            "load_openvino().convert_model\n"
            "assert 'openvino' in sys.modules and 'openvino_telemetry' not in sys.modules, sorted(sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _match(found: list, reference: list) -> None:
    """The same detections: each one in ``found`` has one in ``reference`` with its label, its score
    and its box (an untrained head may order near-equal scores differently)."""
    assert len(found) == len(reference) > 0
    for f, r in zip(found, reference):
        assert len(f.scores) == len(r.scores) > 0
        torch.testing.assert_close(f.scores.sort().values, r.scores.sort().values, atol=1e-5, rtol=0)
        for box, score, label in zip(f.boxes, f.scores, f.labels):
            close = ((r.boxes - box).abs().amax(dim=1) < 1e-3) & (r.labels == label) & ((r.scores - score).abs() < 1e-5)
            assert close.any(), (box, score, label)


@needs_openvino
def test_a_detector_s_ir_gives_the_onnx_detections_through_detect_s_code_path(tmp_path):
    from effml.cli._common import fast_network

    size = 64
    torch.manual_seed(0)
    model = effml.create_model(load_spec(CONFIGS / "efficientdet_tiny.json"), resolution=size).eval()
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(model, onnx_path, input_size=size)
    xml = export_openvino(model, onnx_path).path
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in ((48, 90, 3), (80, 50, 3))]
    found = {}
    for path in (onnx_path, xml):
        network = fast_network(model, size, path, False)  # what `effml detect --onnx PATH` runs
        assert network.is_detector
        detector = ImageDetector(model, Preprocess(size, 1.0), score_threshold=0.0, max_detections=20,
                                 network=network)
        found[path.suffix] = detector(pictures)
    assert type(fast_network(model, size, xml, False)).__name__ == "OpenVinoRunner"
    _match(found[".xml"], found[".onnx"])


# ---------------------------------------------------------------- the command


def _run(*args) -> subprocess.CompletedProcess[str]:
    return run_effml(args, timeout=600)


@needs_openvino
def test_cli_export_openvino_then_predict_on_the_ir_as_on_the_onnx_file(tmp_path):
    out = tmp_path / "m" / "lite0.onnx"
    model = ("tf_efficientnet_lite0", "--input-size", 32)  # random weights: the commands are under test
    proc = _run("export", *model, "--onnx", out, "--openvino")
    assert proc.returncode == 0, proc.stderr
    assert "verified with OpenVINO: max abs diff" in proc.stdout and str(out.with_suffix(".xml")) in proc.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["lite0.bin", "lite0.onnx", "lite0.xml"]

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    preds = {}
    for path in (out, out.with_suffix(".xml")):
        proc = _run("predict", *model, image, "--onnx", path, "-k", 3, "--json")
        assert proc.returncode == 0, proc.stderr
        preds[path.suffix] = json.loads(proc.stdout)[0]["predictions"]
    assert [p["label"] for p in preds[".xml"]] == [p["label"] for p in preds[".onnx"]]
    np.testing.assert_allclose([p["prob"] for p in preds[".xml"]], [p["prob"] for p in preds[".onnx"]], atol=1e-5)

    proc = _run("predict", "tf_efficientnet_lite0", image, "--onnx", out.with_suffix(".xml"))  # 224 px images
    assert proc.returncode == 2 and "OpenVINO model" in proc.stderr and "takes input 3x32x32" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_openvino
def test_benchmark_times_openvino_beside_onnxruntime_and_by_default():
    assert "openvino" in default_runtimes()
    seen: list[str] = []
    results = benchmark(_tiny(), batch_sizes=(1, 2), input_size=16, runtimes=("onnxruntime", "openvino"),
                        warmup=1, iters=2, threads=1, progress=seen.append)
    assert [(r.runtime, r.batch_size) for r in results] == [
        ("onnxruntime", 1), ("onnxruntime", 2), ("openvino", 1), ("openvino", 2)]
    assert all(r.p50_ms > 0 and r.threads == 1 for r in results)
    assert any("openvino: export, check and time" in line for line in seen)


# ---------------------------------------------------------------- without OpenVINO


@pytest.fixture
def no_openvino(monkeypatch):
    """An environment where ``import openvino`` fails, as without the extra."""
    monkeypatch.setitem(sys.modules, "openvino", None)


def test_without_openvino_every_entry_point_names_the_extra(no_openvino, tmp_path):
    with pytest.raises(InputError, match=EXTRA):
        OpenVinoRunner(tmp_path / "m.xml")
    with pytest.raises(InputError, match=EXTRA):
        export_openvino(_tiny(), tmp_path / "m.onnx")
    assert "openvino" not in default_runtimes() and "onnxruntime" in default_runtimes()
    seen: list[str] = []
    with pytest.raises(InputError, match=EXTRA):  # asked for by name: an error before any timing
        benchmark(_tiny(), runtimes=("eager", "openvino"), input_size=16, iters=1, warmup=0, progress=seen.append)
    assert seen == []


def test_cli_export_openvino_without_openvino_writes_nothing(no_openvino, tmp_path):
    from typer.testing import CliRunner

    from effml.cli.main import app

    old = tmp_path / "m.onnx"
    old.write_bytes(b"an earlier export")
    out = CliRunner().invoke(app, ["export", "tf_efficientnet_lite0", "--onnx", str(old), "--openvino"])
    assert out.exit_code == 2 and 'pip install "effml[openvino]"' in out.output, out.output
    assert "RANDOM" not in out.output  # refused before the model was built
    assert old.read_bytes() == b"an earlier export" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_export_openvino_refuses_int8(tmp_path):
    from typer.testing import CliRunner

    from effml.cli.main import app

    out = CliRunner().invoke(app, ["export", "tf_efficientnet_lite0", "--onnx", str(tmp_path / "m.onnx"),
                                   "--openvino", "--int8"])
    assert out.exit_code == 2 and "without --int8" in out.output, out.output
    assert list(tmp_path.iterdir()) == []
