"""Bad input and faults found by the probe of issue 28, each ending in one clear line (or, for a
signal, in nothing half-written): a config that gives a key twice, a setting typed where the
config file goes, a model with fewer outputs than the data has classes, a batch of one image for
BatchNorm, images too small for the network, a data set whose images are all unreadable, a shapes
cache folder that is a file, a run stopped inside an epoch labelled with that epoch, and SIGTERM
during an export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _effml_cli import EFFML, ENV, run_effml

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits.yaml"
TINY = ["data.image_size=16", "train.epochs=1", "train.max_steps=2", "train.threads=1", "data.limit_val=32"]


def _error(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a command that failed as a user error (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_a_key_given_twice_in_a_config_is_refused(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  batch_size: 16\n  batch_size: 32\n")
    line = _error(run_effml(["train", config, f"run.dir={tmp_path / 'r'}"], cwd=tmp_path))
    assert str(config) in line and "found key 'batch_size' twice" in line
    assert not (tmp_path / "r").exists()


def test_a_setting_typed_where_the_config_goes_is_named_as_such(tmp_path):
    line = _error(run_effml(["train", "train.epochs"], cwd=tmp_path))
    assert "looks like a setting" in line and "section.key=value" in line


@pytest.mark.parametrize("override, needle", [
    ("optim.lr=inf", "optim.lr: inf is not a finite number"),  # as YAML's .inf is told
    ("optim.lr=nan", "optim.lr: nan is not a finite number"),
    ("data.image_size=4", "data.image_size: 4 is out of range; it must be >= 8"),
])
def test_overrides_out_of_range_are_refused_like_the_yaml_values(tmp_path, override, needle):
    assert needle in _error(run_effml(["train", DIGITS, override, f"run.dir={tmp_path / 'r'}"], cwd=tmp_path))


def test_fewer_outputs_than_classes_is_refused_before_training(tmp_path):
    line = _error(run_effml(["train", DIGITS, *TINY, "model.num_classes=3", f"run.dir={tmp_path / 'r'}"],
                            cwd=tmp_path))
    assert "model.num_classes=3" in line and "has 10 classes" in line


def test_a_batch_of_one_image_is_refused_for_batch_norm(tmp_path):
    line = _error(run_effml(["train", DIGITS, *TINY, "data.batch_size=1", f"run.dir={tmp_path / 'r'}"],
                            cwd=tmp_path))
    assert "data.batch_size=1" in line and "BatchNorm" in line and "data.batch_size=2" in line


def test_a_folder_of_unreadable_images_says_so_before_the_batch_size(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / "ds" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                (folder / f"{i}.png").write_bytes(b"")
    line = _error(run_effml(["train", DIGITS, *TINY, "data.dataset=folder", f"data.root={tmp_path / 'ds'}",
                             f"run.dir={tmp_path / 'r'}"], cwd=tmp_path))
    assert "has no readable images" in line and "batch size" not in line


def test_a_shapes_cache_that_is_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    env = {**ENV, "EFFML_DATA_DIR": str(blocker)}
    proc = subprocess.run([EFFML, "train", str(ROOT / "configs" / "shapes_detection.yaml"),
                           f"model.name={ROOT / 'configs' / 'efficientdet_tiny.json'}", "model.backbone_weights=null",
                           "train.max_steps=1", f"run.dir={tmp_path / 'r'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    line = _error(proc)
    assert f"{blocker} is a file" in line and "EFFML_DATA_DIR" in line


def test_a_run_stopped_inside_an_epoch_is_labelled_with_that_epoch(tmp_path):
    run = tmp_path / "r"
    proc = run_effml(["train", DIGITS, *TINY, f"run.dir={run}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1 (stopped at step 2/44): val" in proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["kind"] == "epoch"][-1]
    assert last["epoch"] == 1 and last["epoch_step"] == 2 and last["global_step"] == 2


def test_sigterm_during_an_export_leaves_nothing_half_written(tmp_path):
    proc = subprocess.Popen([EFFML, "export", "efficientnet_b0", "--onnx", "m.onnx"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".m.onnx.*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the export ended before it started writing"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    assert not list(tmp_path.glob(".m.onnx.*")) and not (tmp_path / "m.onnx").exists()
