"""Searching detection backbones (MobileDets, arXiv 2004.14525): each sampled backbone wrapped into
SSDLite, trained on the shapes proxy, scored by AP50 on held-out training images, latency of the
whole detector; the winner exported and trained by ``effml train``; clear refusals."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from _effml_cli import run_effml

from effml.detection.ssdlite import EXTRA_DEPTHS, SSDLite, SSDLiteSpec
from effml.errors import EffmlError
from effml.models.counting import count_macs, count_params
from effml.search.spaces.catalog import named_space
from effml.search.study.config import build_space, load_search_config
from effml.search.study.cost import LatencyModel, spec_cost
from effml.search.study.detection_proxy import score, search_network
from effml.search.study.report import write_report
from effml.search.study.reward import mnasnet_reward
from effml.search.study.runner import run_search
from effml.search.study.storage import choose_trial, load_study
from effml.spec import NetworkSpec, parse_arch
from effml.zoo import create_model
from effml.zoo.kinds import spec_to_dict

ROOT = Path(__file__).resolve().parents[1]
EFFML = shutil.which("effml") or str(Path(sys.executable).parent / "effml")
optuna.logging.set_verbosity(optuna.logging.WARNING)

# A backbone with taps at strides 16 and 32 (what SSDLite reads), 64 px, 3 shapes classes.
TINY = NetworkSpec(stages=parse_arch([["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e3_c16"], ["ir_r1_k3_s2_e3_c16"],
                                      ["ir_r1_k3_s2_e3_c24"], ["ir_r1_k3_s2_e3_c32"]]),
                   stem_channels=8, head_channels=32, num_classes=3, resolution=64)


def _config(tmp_path: Path, **search) -> Path:
    """A 2-trial detection search over 2 decisions of TINY on 40 shapes images at 64 px."""
    space = {"name": "tiny_det", "base": spec_to_dict(TINY),
             "choices": [{"at": "s3.r0", "field": "kind", "options": ["ir", "er"]},
                         {"at": "s4.r0", "field": "kernel_size", "options": [3, 5]}]}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    cfg = {
        "search": {"space": "space.yaml", "detector": "ssdlite", "trials": 2, "strategy": "reinforce",
                   "storage": "out/search.db", "study": "det", "workers": 1, "threads": 1, **search},
        "objective": {"kind": "reward", "target": 5.0, "latency": "measured"},
        "proxy": {"data": {"dataset": "shapes", "image_size": 64, "batch_size": 8, "holdout": 0.2},
                  "detect": {"shapes_train": 40, "shapes_val": 8, "shapes_size": 64, "scale_range": [0.75, 1.25]},
                  "optim": {"name": "adamw", "lr": 0.005}, "schedule": {"warmup_epochs": 0},
                  "train": {"epochs": 2, "ema_decay": None, "log_interval": 100}},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _effml(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_effml(args, cwd=cwd, timeout=timeout)


def test_a_detection_trial_trains_and_measures_the_whole_detector(tmp_path):
    cfg = load_search_config(_config(tmp_path))
    detector = search_network(cfg, TINY)
    assert detector == SSDLiteSpec(backbone=TINY, extra_depths=EXTRA_DEPTHS, num_classes=3, resolution=64)
    net = create_model(detector)
    assert isinstance(net, SSDLite)
    cost = spec_cost(detector)
    assert cost == {"macs": count_macs(net, 64), "params": count_params(net)}
    flops = load_search_config(_config(tmp_path), ["objective.latency=flops"])
    assert LatencyModel(flops.objective)(detector) == pytest.approx(cost["macs"] / 1e6)
    assert cost["macs"] > count_macs(net.backbone, 64)  # the extra maps and predictors on top
    assert LatencyModel(cfg.objective)(detector) > 0
    # classification searches are unchanged: the sample itself
    assert search_network(load_search_config(None, []), TINY) is TINY


def test_every_metric_in_percent_scores_as_a_fraction():
    """Top-1 and COCO AP are both reported in percent; the search's ACC is one rule, value / 100."""
    assert score({"top1": 76.3, "top5": 93.0}, "top1") == pytest.approx(0.763)
    assert score({"AP": 20.0, "AP50": 33.8}, "AP50") == pytest.approx(0.338)
    assert math.isnan(score(None, "AP50")) and math.isnan(score({"top1": 50.0}, "AP50"))


@pytest.fixture(scope="module")
def detection_search(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("detsearch")
    cfg = load_search_config(_config(tmp, pruner="median"))  # per-epoch AP50 reaches the pruner
    lines: list[str] = []
    result = run_search(cfg, build_space(cfg, 3), echo=lines.append)
    assert result.finished == 2 and result.failed == 0, lines
    assert any("reward" in line and "AP50" in line for line in lines), lines
    return tmp


def test_a_detection_search_records_ap50_and_its_reward(detection_search):
    study = load_study(str(detection_search / "out" / "search.db"))
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        m = t.user_attrs["metrics"]
        assert m["metric"] == "AP50" and 0 <= m["accuracy"] <= 1 and 0 <= m["val_accuracy"] <= 1
        assert m["reward"] == pytest.approx(mnasnet_reward(m["accuracy"], m["latency_ms"], 5.0))
        assert t.values == [m["reward"]]
        spec = t.user_attrs["spec"]
        assert spec["kind"] == "ssdlite" and spec["num_classes"] == 3 and spec["resolution"] == 64
        assert m["macs"] == spec_cost(choose_trial(study, t.number).spec)["macs"]
        assert set(t.params) == {"s3.r0.kind", "s4.r0.kernel_size"}
        assert len(t.intermediate_values) == 2  # AP50 after each of the 2 epochs, for the pruner
    objective = study.user_attrs["objective"]
    assert objective["detector"] == "ssdlite" and objective["metric"] == "AP50"


def test_the_exported_winner_trains_as_a_detector_and_the_report_reads_ap50(detection_search):
    tmp = detection_search
    proc = _effml("search", "export", "out/search.db", "-o", "best.json", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp / "best.json").read_text())["kind"] == "ssdlite"
    proc = _effml("train", ROOT / "configs" / "ssdlite_shapes.yaml", "model.name=best.json", "data.image_size=64",
                  "detect.shapes_train=40", "detect.shapes_val=8", "detect.shapes_size=64", "train.max_steps=2",
                  "train.threads=1", "run.dir=runs/best", "--quiet", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp / "runs" / "best" / "run.json").read_text())
    assert info["task"] == "detect" and "AP50" in info["val"]
    assert json.loads((tmp / "runs" / "best" / "model.json").read_text())["kind"] == "ssdlite"
    written = write_report(load_study(str(tmp / "out" / "search.db")), tmp / "report")
    page = written.html.read_text()
    assert "AP50 %" in page and "ssdlite on " in page


def test_the_cli_runs_a_detection_search(detection_search):
    tmp = detection_search
    proc = _effml("search", "search.yaml", "search.trials=1", "search.study=cli", "search.storage=out/cli.db",
                  "proxy.train.epochs=1", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "trial 1/1" in proc.stdout and "AP50" in proc.stdout and "reward" in proc.stdout
    (t,) = load_study(str(tmp / "out" / "cli.db")).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert t.user_attrs["metrics"]["metric"] == "AP50" and t.user_attrs["spec"]["kind"] == "ssdlite"


@pytest.mark.parametrize("overrides, message", [
    (["proxy.data.dataset=digits"], "search.detector=ssdlite searches detection backbones, but "
                                    "proxy.data.dataset=digits is a classification data set"),
    (["search.detector=null"], "proxy.data.dataset=shapes is a detection data set, but search.detector is null"),
    (["objective.metric=top1"], "objective.metric=top1 is a classification metric"),
    (["search.detector=null", "proxy.data.dataset=digits", "objective.metric=AP50"],
     "objective.metric=AP50 scores detectors; set search.detector=ssdlite"),
    (["objective.latency=table", "objective.table=lut.json"], "objective.latency=table predicts a backbone's"),
    (["proxy.data.holdout=0"], "needs proxy.data.holdout > 0"),
    (["search.detector=yolo"], "search.detector"),
])
def test_mismatched_detection_searches_are_one_clear_error(tmp_path, monkeypatch, overrides, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lut.json").write_text("{}")
    with pytest.raises(EffmlError, match=message.replace("(", r"\(")):
        cfg = load_search_config(_config(tmp_path), overrides)
        run_search(cfg, build_space(cfg, 3), echo=lambda line: None)
    assert not (tmp_path / "out" / "search.db").exists()  # refused before any study is made


def test_the_ibn_only_space_has_only_ibn_layers():
    full, ibn = named_space("mobiledet", num_classes=3, resolution=128), named_space("mobiledet_ibn", num_classes=3,
                                                                                       resolution=128)
    assert ibn.base == full.base and ibn.name == "mobiledet_ibn"
    assert {c.field for c in ibn.choices} == {"expand_ratio", "kernel_size"}
    kinds = {b.kind for stage in ibn.largest().spec.stages[1:] for b in stage}
    assert kinds == {"ir"}
    fused = named_space("mobiledet_ibn_fused", num_classes=3, resolution=128)
    assert {o for c in fused.choices if c.field == "kind" for o in c.options} == {"ir", "er"}


def test_the_shipped_mobiledet_search_config_describes_a_detection_search():
    config = ROOT / "configs" / "search_mobiledet_shapes.yaml"
    cfg = load_search_config(config)
    assert (cfg.search.space, cfg.search.detector, cfg.search.strategy) == ("mobiledet", "ssdlite", "reinforce")
    assert cfg.objective.metric == "AP50" and cfg.objective.latency == "measured" and cfg.proxy.data.holdout == 0.2
    space = build_space(cfg, 3)
    detector = search_network(cfg, space.base)
    assert isinstance(detector, SSDLiteSpec) and detector.resolution == 128 and detector.num_classes == 3
    ibn = load_search_config(config, ["search.space=mobiledet_ibn"])
    assert build_space(ibn, 3).name == "mobiledet_ibn"
