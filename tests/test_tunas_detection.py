"""MobileDets' search (arXiv 2004.14525) on the one-shot engine: ``effml search`` with
``search.strategy=tunas`` and ``search.detector=ssdlite`` trains a detection supernet, rewards the
controller with a held-out detection signal and the whole detector's MACs, and records the found
detector; ``effml supernet export --child`` writes it as an ordinary detection run whose weights
load strictly into ``create_model(spec)`` and give the supernet child's outputs, and that ``effml
detect`` runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _effml_cli import effml
from PIL import Image

from effml.detection.ssdlite import SSDLite, SSDLiteSpec
from effml.errors import SearchError
from effml.models.weights import load_weights
from effml.search.oneshot.detection_supernet import SSDLiteSupernet
from effml.search.oneshot.signals import DetectionSignal
from effml.search.oneshot.tunas import check_tunas, load_tunas_supernet
from effml.search.spaces.search_space import Choice, SearchSpace
from effml.search.study.config import build_space, load_search_config
from effml.search.study.storage import load_study
from effml.spec import BlockSpec, NetworkSpec
from effml.train.trainer import preserved_global_state
from effml.zoo import create_model, load_spec

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "search_tunas_mobiledet_shapes.yaml"
STEPS = 12


def tiny_detection_space(num_classes: int = 3) -> SearchSpace:
    """Five stages (strides 2-32, SSDLite's C4 and C5 taps); two rows choose IBN, fused IBN or Tucker."""
    rows = ((BlockSpec("ds", 8, kernel_size=3),),
            (BlockSpec("ir", 8, kernel_size=3, stride=2, expand_ratio=4.0),),
            (BlockSpec("ir", 16, kernel_size=3, stride=2, expand_ratio=4.0, input_compression=0.25,
                       output_compression=0.25),),
            (BlockSpec("ir", 16, kernel_size=3, stride=2, expand_ratio=4.0, input_compression=0.25,
                       output_compression=0.25),),
            (BlockSpec("ir", 24, kernel_size=3, stride=2, expand_ratio=4.0),))
    base = NetworkSpec(rows, stem_channels=8, head_channels=32, num_classes=num_classes, resolution=64, act="relu6")
    choices = []
    for s in (2, 3):
        choices += [Choice("kind", ("ir", "er", "tucker"), s, 0),
                    Choice("expand_ratio", (4.0, 8.0), s, 0, kinds=("ir", "er")),
                    Choice("kernel_size", (3, 5), s, 0, kinds=("ir", "er")),
                    Choice("input_compression", (0.25, 0.75), s, 0, kinds=("tucker",))]
    return SearchSpace("tiny_det", base, tuple(choices))


def _args(tmp_path: Path, *more: str) -> list[str]:
    space = tmp_path / "tiny_det.json"
    space.write_text(json.dumps(tiny_detection_space().to_dict()))
    return [f"search.space={space}", f"search.storage={tmp_path / 'search.db'}", "search.study=det",
            "objective.target=40", "proxy.data.image_size=64", "proxy.detect.shapes_size=64",
            "proxy.detect.shapes_train=80", "proxy.detect.shapes_val=8", "proxy.train.epochs=2",
            f"proxy.train.max_steps={STEPS}", "proxy.train.eval_every=2", "proxy.train.log_interval=100",
            f"proxy.run.dir={tmp_path / 'run'}", *more]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("tunas_det")
    out = effml("search", str(CONFIG), *_args(tmp_path))
    assert f"TuNAS: {STEPS} steps; found" in out.stdout and "held-out AP50" in out.stdout, out.stdout
    return tmp_path


def test_the_search_records_the_found_detector_rewarded_by_a_held_out_signal_and_macs(searched):
    record = json.loads((searched / "run" / "tunas.json").read_text())
    assert record["signal"] == "exp(-loss)" and record["unit"] == "MMACs" and len(record["history"]) == STEPS - int(0.25 * STEPS)
    for h in record["history"]:
        assert 0 < h["accuracy"] <= 1 and h["cost"] > 0  # exp(-loss) of a held-out window (the default)
    spec = load_spec(searched / "run" / "found_model.json")
    assert isinstance(spec, SSDLiteSpec) and spec.num_classes == 3 and spec.resolution == 64
    [trial] = load_study(str(searched / "search.db"), "det").trials
    assert trial.user_attrs["spec"]["kind"] == "ssdlite"
    metrics = trial.user_attrs["metrics"]
    # the whole detector's MACs, as a black-box trial of search.detector=ssdlite costs it
    assert metrics["latency_mmacs"] == pytest.approx(metrics["macs"] / 1e6)
    assert 0 <= metrics["accuracy"] <= 1 and record["found"]["metrics"] == metrics


def test_the_exported_detector_is_an_ordinary_run_equal_to_the_supernet_child(searched, tmp_path):
    run, child = searched / "run", tmp_path / "child"
    out = effml("supernet", "export", str(run), "--child", str(run / "found_model.json"), "-o", str(child))
    assert "held-out AP" in out.stdout, out.stdout
    info = json.loads((child / "run.json").read_text())
    assert info["task"] == "detect" and "AP50" in info["val"] and info["category_ids"]
    spec = load_spec(child / "model.json")
    plain = create_model(spec)  # no supernet code
    load_weights(plain, child / "weights.safetensors")  # strict
    with preserved_global_state():
        trained = load_tunas_supernet(run)
    supernet = trained.supernet
    assert isinstance(supernet, SSDLiteSupernet)
    x = torch.randn(2, 3, 64, 64)
    calibrated = trained.calibrated(supernet.child_spec(spec))
    assert isinstance(calibrated, SSDLite)
    # the export's BN statistics are the calibrated child's; written into the supernet's slices,
    # the supernet runs the child as the exported detector does
    supernet.load_child_buffers(spec, plain)
    supernet.eval()
    plain.eval()
    with torch.no_grad():
        got, want = supernet(x, child=spec), plain(x)
        for a, b in zip([*got[0], *got[1]], [*want[0], *want[1]]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        for a, b in zip(calibrated(x)[0], want[0]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    Image.new("RGB", (64, 64), (30, 60, 90)).save(tmp_path / "photo.png")
    drawn = tmp_path / "drawn"
    effml("detect", str(child), str(tmp_path / "photo.png"), "--out-dir", str(drawn))
    assert list(drawn.iterdir()), "detect wrote nothing"


def test_the_loss_signal_is_exp_of_minus_the_window_loss(searched):
    with preserved_global_state():
        trained = load_tunas_supernet(searched / "run")
    supernet, trainer = trained.supernet, trained.trainer
    supernet.train()
    spec = supernet.child_spec(load_spec(searched / "run" / "found_model.json"))
    loss, ap50 = DetectionSignal("loss"), DetectionSignal("ap50")
    q = loss.quality(trainer, supernet, spec, 8, 0)
    assert 0 < q <= 1
    assert 0 <= ap50.quality(trainer, supernet, spec, 8, 0) <= 1
    assert loss.quality(trainer, supernet, spec, 8, 1) != q  # the next window: other images
    with pytest.raises(SearchError, match="tunas.detection_signal='map'"):
        DetectionSignal("map")


def test_a_detection_search_is_refused_before_training_where_it_cannot_run(tmp_path):
    def cfg(*more: str):
        return load_search_config(CONFIG, _args(tmp_path, *more))

    c = cfg("objective.latency=table", "objective.table=x.json")
    with pytest.raises(SearchError, match="objective.latency=table predicts a backbone's latency"):
        check_tunas(c, build_space(c))
    c = cfg("objective.target=1")
    with pytest.raises(SearchError, match=r"below the smallest member's cost \(\d+\.?\d* MMACs\)"):
        check_tunas(c, build_space(c))
    c = cfg("search.detector=retinanet")
    with pytest.raises(SearchError, match="search.detector=retinanet needs a black-box"):
        check_tunas(c, build_space(c))
    assert not (tmp_path / "run").exists()


def test_selection_on_a_tunas_run_says_what_to_do_instead(searched):
    run = searched / "run"
    out = effml("supernet", "select", str(run), "--flops", "40M", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "is a TuNAS search" in out.stderr and f"--child {run / 'found_model.json'}" in out.stderr
