"""Run directories cannot be corrupted: one writer at a time (an OS lock), a resume that would
change what the checkpoint depends on is refused before any file is touched, a finished run is
never overwritten, a kill before the outputs resumes to the same run.json, a half-written metrics
row is dropped, files keep the umask's permissions, and damaged metadata is a clear error."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _effml_cli import run_effml
from filelock import FileLock
from safetensors.torch import load_file

from effml.errors import EffmlError
from effml.spec import NetworkSpec, parse_arch
from effml.train import engine
from effml.train.checkpoint import CheckpointError
from effml.train.config import load_config
from effml.train.engine import fit
from effml.train.run_dir import RunDirError, RunLock, RunLockedError, load_run, read_run_config
from effml.zoo import spec_to_json

EFFML = shutil.which("effml") or str(Path(sys.executable).parent / "effml")

# The small EfficientNet-family spec of tests/test_train.py (MBConv + SE + swish, 20k parameters).
TINY = NetworkSpec(
    stages=parse_arch([["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r1_k3_s2_e4_c24_se0.25"],
                       ["ir_r1_k5_s2_e4_c40_se0.25"]]),
    stem_channels=16, head_channels=128, num_classes=10, resolution=32, dropout=0.1, drop_path=0.1,
)


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("spec") / "tiny.json"
    path.write_text(spec_to_json(TINY))
    return str(path)


def _overrides(spec: str, run_dir: Path, *extra: str) -> list[str]:
    """Digits at 16 px, 96 training images, batch 16: 6 steps an epoch."""
    return [f"model.name={spec}", f"run.dir={run_dir}", "data.image_size=16", "data.batch_size=16",
            "data.limit_train=96", "optim.name=adamw", "optim.lr=0.003", "train.log_interval=2",
            "train.epochs=1", "train.ema_decay=0.9", "train.threads=1", *extra]


def _cfg(spec: str, run_dir: Path, *extra: str):
    return load_config(None, _overrides(spec, run_dir, *extra))


@pytest.fixture(scope="module")
def finished(tiny_spec, tmp_path_factory) -> Path:
    """An uninterrupted one-epoch run; tests copy it before changing anything."""
    run = tmp_path_factory.mktemp("runs") / "finished"
    fit(_cfg(tiny_spec, run), quiet=True)
    return run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the finished run."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _effml(*args: str) -> subprocess.CompletedProcess:
    return run_effml(args)


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


def _saved(run_dir: Path, *overrides: str):
    """The config saved in ``run_dir`` (a copy: its own run.dir), with overrides."""
    return load_config(run_dir / "config.yaml", [*overrides, f"run.dir={run_dir}"])


def _interrupted(tiny_spec: str, run_dir: Path, *extra: str) -> Path:
    """A run killed after its last checkpoint, before its outputs (weights, model.json, run.json)."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the outputs")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "_write_outputs", killed)
        with pytest.raises(KeyboardInterrupt):
            fit(_cfg(tiny_spec, run_dir, *extra), quiet=True)
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "run.json").exists()
    return run_dir


@pytest.fixture(scope="module")
def interrupted(tiny_spec, tmp_path_factory) -> Path:
    """An interrupted run; tests copy it before changing anything."""
    return _interrupted(tiny_spec, tmp_path_factory.mktemp("runs") / "interrupted")


# ---------------------------------------------------------------- 1. one process at a time


class TestLock:
    def test_a_training_into_a_locked_dir_is_refused_naming_the_owner(self, tiny_spec, tmp_path, run):
        fresh = tmp_path / "fresh"
        with RunLock(fresh):
            with pytest.raises(RunLockedError, match=rf"{fresh} is in use by another training \(pid "
                                                     rf"{os.getpid()} on host .*choose another run.dir"):
                fit(_cfg(tiny_spec, fresh), quiet=True)
        assert sorted(p.name for p in fresh.iterdir()) == [".lock"]  # nothing written, owner note gone
        before = _snapshot(run)
        with FileLock(str(run / ".lock"), timeout=0):  # any holder of the OS lock, without the note
            with pytest.raises(RunLockedError, match="in use by another training.*owner unknown"):
                fit(_saved(run, "train.epochs=2"), resume=True, quiet=True)
        assert _snapshot(run) == before

    def test_the_lock_is_released_on_success_on_error_and_when_the_holder_is_killed(
            self, tiny_spec, tmp_path, run):
        with RunLock(run):  # released by the finished fit of the fixture
            pass
        with pytest.raises(EffmlError, match="already holds a run"):
            fit(_saved(run), quiet=True)
        with RunLock(run):  # released after the refusal
            pass
        code = ("import os, signal, sys; from effml.train.run_dir import RunLock; "
                "RunLock(sys.argv[1]).acquire(); print('held', flush=True); os.kill(os.getpid(), signal.SIGKILL)")
        killed = tmp_path / "killed"
        out = subprocess.run([sys.executable, "-c", code, str(killed)], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == -signal.SIGKILL and "held" in out.stdout, out.stderr
        assert (killed / ".lock.owner").exists()  # the dead owner's note stays, its lock does not
        with RunLock(killed):
            assert json.loads((killed / ".lock.owner").read_text())["pid"] == os.getpid()

    def test_cli_second_training_into_a_locked_dir_exits_2_with_one_line(self, tiny_spec, tmp_path):
        locked = tmp_path / "locked"
        with RunLock(locked):
            out = _effml("train", *_overrides(tiny_spec, locked), "--quiet")
        line = _one_error_line(out)
        assert str(locked) in line and f"pid {os.getpid()}" in line
        assert sorted(p.name for p in locked.iterdir()) == [".lock"]


# ---------------------------------------------------------------- 2-3. what a resume may change


class TestResumeChanges:
    @pytest.mark.parametrize("change, shown", [
        ("data.batch_size=8", "data.batch_size 16 -> 8"),
        ("data.image_size=24", "data.image_size 16 -> 24"),
        ("data.holdout=0.1", "data.holdout 0.0 -> 0.1"),
        ("train.seed=1", "train.seed 0 -> 1"),
        ("advprop.enabled=true", "advprop.enabled false -> true"),
        ("distill.temperature=2", "distill.temperature 4.0 -> 2.0"),
        ("model.dropout=0.3", "model.dropout null -> 0.3"),
        ("data.dataset=folder", "data.dataset \"digits\" -> \"folder\""),
    ])
    def test_a_change_the_checkpoint_depends_on_is_refused_before_any_file_is_touched(
            self, tmp_path, interrupted, change, shown):
        run = Path(shutil.copytree(interrupted, tmp_path / "run"))
        before = _snapshot(run)
        with pytest.raises(RunDirError, match=rf"cannot resume {run}: .*depends on: {shown}"):
            fit(_saved(run, change, "train.epochs=3"), resume=True, quiet=True)
        assert _snapshot(run) == before

    def test_a_spec_file_edited_under_the_same_name_is_refused(self, tmp_path):
        spec = tmp_path / "edited.json"
        spec.write_text(spec_to_json(TINY))
        interrupted = _interrupted(str(spec), tmp_path / "r")
        before = _snapshot(interrupted)
        spec.write_text(spec_to_json(TINY.replace(dropout=0.3)))  # same name, same shapes
        with pytest.raises(RunDirError, match=r"model differs from the one its checkpoint was trained "
                                              r"as: dropout 0.1 -> 0.3"):
            fit(_saved(interrupted), resume=True, quiet=True)
        wider = TINY.replace(head_channels=64)  # a record-less (older) run: the tensors still check
        (interrupted / "checkpoints" / "model.json").unlink()
        spec.write_text(spec_to_json(wider))
        with pytest.raises(CheckpointError, match="does not fit the model and optimizer built from the config"):
            fit(_saved(interrupted), resume=True, quiet=True)
        del before["checkpoints/model.json"]
        assert _snapshot(interrupted) == before

    def test_safe_changes_are_allowed_and_recorded_and_config_yaml_follows(self, tmp_path, interrupted):
        interrupted = Path(shutil.copytree(interrupted, tmp_path / "r"))
        changes = ["train.epochs=2", "train.log_interval=3", "data.workers=0", "train.checkpoint_interval=4"]
        result = fit(_saved(interrupted, *changes), resume=True, quiet=True)
        assert result.global_step == 12 and result.epochs_done == 2
        rows = [json.loads(x) for x in (interrupted / "metrics.jsonl").read_text().splitlines()]
        resumes = [r for r in rows if r["kind"] == "resume"]
        assert all(isinstance(r.pop("session_s"), float) for r in resumes)  # wall seconds: not compared
        assert resumes == [{"kind": "resume", "epoch": 1, "step": 0, "global_step": 6, "changes": {
            "train.epochs": [1, 2], "train.log_interval": [2, 3], "train.checkpoint_interval": [None, 4]}}]
        saved = load_config(interrupted / "config.yaml")
        assert (saved.train.epochs, saved.train.log_interval) == (2, 3)

    def test_cli_resume_with_a_changed_batch_size_lists_it_and_a_config_file_cannot_redirect_it(
            self, run, tmp_path):
        (run / "run.json").unlink()  # an unfinished run with its last checkpoint
        before = _snapshot(run)
        other = tmp_path / "other"
        config = tmp_path / "elsewhere.yaml"
        config.write_text(f"run:\n  dir: {other}\ntrain:\n  epochs: 2\n")
        out = _effml("train", str(config), "--resume", str(run), "data.batch_size=8", "--quiet")
        line = _one_error_line(out)
        assert f"cannot resume {run}" in line and "data.batch_size 16 -> 8" in line
        assert _snapshot(run) == before and not other.exists()

    def test_a_config_file_never_redirects_a_resume(self, run, tmp_path):
        from typer.testing import CliRunner

        from effml.cli.main import app

        other = tmp_path / "other"
        config = tmp_path / "elsewhere.yaml"
        config.write_text(f"run:\n  dir: {other}\ntrain:\n  epochs: 2\n")
        out = CliRunner().invoke(app, ["train", str(config), "--resume", str(run), "--quiet"])
        assert out.exit_code == 0, out.output
        assert json.loads((run / "run.json").read_text())["global_step"] == 12 and not other.exists()
        assert load_config(run / "config.yaml").run.dir == str(run)


# ---------------------------------------------------------------- 4. a finished run stays finished


class TestFinishedRun:
    def test_training_into_a_finished_run_is_refused_with_or_without_its_checkpoints(self, run, tiny_spec):
        before = _snapshot(run)
        with pytest.raises(EffmlError, match=rf"{run} already holds a run, finished.*choose another "
                                             r"run.dir.*--resume .* train.epochs="):
            fit(_cfg(tiny_spec, run), quiet=True)
        assert _snapshot(run) == before
        shutil.rmtree(run / "checkpoints")
        before = _snapshot(run)
        with pytest.raises(EffmlError, match=r"finished \(run.json, its checkpoints removed\); choose "
                                             r"another run.dir .*model.weights="):
            fit(_cfg(tiny_spec, run), quiet=True)
        with pytest.raises(CheckpointError, match="finished run whose checkpoints were removed"):
            fit(_saved(run, "train.epochs=2"), resume=True, quiet=True)
        assert _snapshot(run) == before

    def test_resuming_a_finished_run_needs_more_to_train_and_then_rewrites_its_outputs(self, run, finished):
        before = _snapshot(run)
        with pytest.raises(EffmlError, match=r"already finished \(6 steps, 1 epochs\).*--resume .* "
                                             r"train.epochs=2"):
            fit(_saved(run), resume=True, quiet=True)
        assert _snapshot(run) == before
        result = fit(_saved(run, "train.epochs=2"), resume=True, quiet=True)
        info = json.loads((run / "run.json").read_text())
        assert result.global_step == info["global_step"] == 12
        assert info["val"] == result.val != json.loads((finished / "run.json").read_text())["val"]
        old, new = load_file(finished / "weights.safetensors"), load_file(run / "weights.safetensors")
        assert any(not torch.equal(old[k], new[k]) for k in old)

    def test_cli_training_into_a_finished_run_exits_2(self, run):
        before = _snapshot(run)
        line = _one_error_line(_effml("train", str(run / "config.yaml"), f"run.dir={run}", "--quiet"))
        assert f"{run} already holds a run" in line and "another run.dir" in line
        assert _snapshot(run) == before


# ---------------------------------------------------------------- 5. killed before the outputs


class TestKilledBeforeOutputs:
    def test_a_resume_writes_the_outputs_an_uninterrupted_run_wrote(self, tmp_path, finished, interrupted):
        killed = Path(shutil.copytree(interrupted, tmp_path / "killed"))
        fit(_saved(killed), resume=True, quiet=True)
        assert (killed / "run.json").read_text() == (finished / "run.json").read_text()
        assert (killed / "model.json").read_text() == (finished / "model.json").read_text()
        for name in ("weights.safetensors", "weights_ema.safetensors"):
            a, b = load_file(finished / name), load_file(killed / name)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    @pytest.mark.parametrize("lost", [("run.json",), ("run.json", "model.json", "weights_ema.safetensors"),
                                      ("weights.safetensors",)])
    def test_outputs_lost_or_cut_short_are_rewritten_the_same(self, run, finished, lost):
        for name in lost:
            (run / name).unlink()
        fit(_saved(run), resume=True, quiet=True)
        for name in ("run.json", "model.json"):
            assert (run / name).read_text() == (finished / name).read_text()
        assert (run / "weights.safetensors").read_bytes() == (finished / "weights.safetensors").read_bytes()

    def test_without_its_last_evaluation_row_the_run_is_evaluated_again(self, run, finished):
        (run / "run.json").unlink()
        rows = (run / "metrics.jsonl").read_text().splitlines()
        (run / "metrics.jsonl").write_text("".join(r + "\n" for r in rows if '"kind": "epoch"' not in r))
        fit(_saved(run), resume=True, quiet=True)
        info, reference = (json.loads((d / "run.json").read_text()) for d in (run, finished))
        assert info["val"]["top1"] == pytest.approx(reference["val"]["top1"])
        assert info["ema_val"]["top1"] == pytest.approx(reference["ema_val"]["top1"])


# ---------------------------------------------------------------- 6. metrics.jsonl cut mid-row


class TestMetricsLog:
    def test_a_half_written_last_row_is_dropped_on_resume(self, run, finished):
        (run / "run.json").unlink()
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"kind": "step", "epoch": 1, "step": 6, "global_st')
        fit(_saved(run), resume=True, quiet=True)
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["kind"] for r in rows][-1] == "resume"
        assert (run / "run.json").read_text() == (finished / "run.json").read_text()

    def test_a_damaged_row_before_the_last_is_a_clear_error(self, run):
        (run / "run.json").unlink()
        rows = (run / "metrics.jsonl").read_text().splitlines()
        rows[0] = rows[0][:20]
        (run / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))
        with pytest.raises(RunDirError, match=r"metrics.jsonl line 1 is not a metrics row.*delete that line"):
            fit(_saved(run), resume=True, quiet=True)


# ---------------------------------------------------------------- 7. the umask's permissions


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class TestPermissions:
    def test_run_files_have_the_mode_the_umask_gives(self, finished):
        want = 0o666 & ~_umask()
        for name in ("config.yaml", "metrics.jsonl", "run.json", "model.json", "weights.safetensors",
                     "weights_ema.safetensors", "checkpoints/last.pt", "checkpoints/model.json"):
            assert (finished / name).stat().st_mode & 0o777 == want, name

    def test_another_umask_is_followed_too(self, tmp_path):
        code = ("import os, sys; os.umask(0o027); from pathlib import Path; import torch; "
                "from effml.files import atomic_write_text; from effml.train.checkpoint import save_checkpoint; "
                "from effml.models.weights import save_weights; d = Path(sys.argv[1]); "
                "atomic_write_text(d / 'a.txt', 'x'); save_checkpoint(d / 'c.pt', {'x': 1}); "
                "save_weights({'w': torch.zeros(2)}, d / 'w.safetensors')")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {
            "a.txt": 0o640, "c.pt": 0o640, "w.safetensors": 0o640}


# ---------------------------------------------------------------- 8. damaged metadata


class TestDamagedMetadata:
    @pytest.mark.parametrize("name, text, said", [
        ("run.json", '{"weights": "weights_ema.safetensors", "input_', r"run.json is not readable JSON"),
        ("run.json", "[1, 2]", r"run.json is damaged \(top level: Input should be a valid dictionary"),
        ("run.json", '{"weights": "weights_ema.safetensors"}', r"run.json is damaged \(input_size: Field required"),
        ("run.json", None, r"not a finished run directory \(no run.json\)"),
        ("model.json", "{", r"no usable model.json"),
        ("model.json", None, r"no usable model.json: spec file .* does not exist"),
        ("weights_ema.safetensors", None, r"weights_ema.safetensors is missing although .*run.json names it"),
    ])
    def test_load_run_names_the_file_and_the_repair(self, run, name, text, said):
        if text is None:
            (run / name).unlink()
        else:
            (run / name).write_text(text)
        with pytest.raises(EffmlError, match=said + ".*" + ("effml train" if name == "run.json" and text is None
                                                           else rf"effml train --resume {run}")):
            load_run(run)

    def test_a_damaged_run_json_is_repaired_by_a_resume(self, run, finished):
        (run / "run.json").write_text('{"weights": "weights_ema.safetensors"}')
        fit(_saved(run), resume=True, quiet=True)
        assert (run / "run.json").read_text() == (finished / "run.json").read_text()
        assert load_run(run).classes == tuple(str(i) for i in range(10))

    def test_config_yaml_damaged_or_missing(self, run):
        path = run / "config.yaml"
        good = path.read_text()
        path.write_text("model: [unclosed\n")
        with pytest.raises(RunDirError, match=r"config.yaml is not readable YAML.*delete it to resume with the copy"):
            read_run_config(run)
        path.write_text("just text\n")
        with pytest.raises(RunDirError, match=r"config.yaml holds str, not the run's config sections"):
            read_run_config(run)
        path.write_text(good.split("\ntrain:")[0] + "\n")  # cut short: train, advprop, ... gone
        with pytest.raises(RunDirError, match=r"config.yaml lacks train, advprop, distill, detect, run "
                                              r"\(effml writes every section\): it was cut short"):
            read_run_config(run)
        path.write_text(good.split("\nrun:")[0] + "\nrun:\n  other: 1\n")  # cut inside the last section
        with pytest.raises(RunDirError, match=r"config.yaml lacks run.dir "):
            read_run_config(run)
        path.unlink()
        assert read_run_config(run).data.batch_size == 16  # the copy recorded in the checkpoint
        shutil.rmtree(run / "checkpoints")
        with pytest.raises(RunDirError, match=r"config.yaml is missing.*no checkpoint"):
            read_run_config(run)

    def test_a_damaged_checkpoint_is_a_clear_error(self, run):
        (run / "run.json").unlink()
        ckpt = run / "checkpoints" / "last.pt"
        torch.save({"model": {}}, ckpt)
        with pytest.raises(CheckpointError, match=r"not an effml training checkpoint \(it lacks \['optimizer'"):
            fit(_saved(run), resume=True, quiet=True)
        ckpt.write_bytes(b"garbage")
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            fit(_saved(run), resume=True, quiet=True)

    def test_cli_eval_of_a_run_with_a_corrupt_run_json_exits_2(self, run):
        (run / "run.json").write_text("{not json")
        line = _one_error_line(_effml("eval", str(run)))
        assert "run.json is not readable JSON" in line and f"effml train --resume {run}" in line


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_atomic_write_is_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch, code):
    from effml.files import atomic_write_text

    target = tmp_path / "run.json"
    target.write_text("old")

    def fail(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(EffmlError, match=r"cannot write .*run\.json: .*intact"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temp file left


def test_an_old_detection_run_json_reads_its_ap_in_percent(tmp_path):
    """run.json written before ``metric_unit`` holds a detector's COCO AP/AR as fractions: read
    back, they are percent like a new run's; top-1 (always %) and a new run.json are left alone."""
    from effml.train.run_dir import read_run_info, shipped_metrics, write_run_info

    common = {"input_size": 128, "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3, "classes": ["a", "b"]}
    fractions = {"AP": 0.338, "AP50": 0.52, "APs": float("nan"), "AP/a": 0.25, "count": 8}
    percent = {"AP": 33.8, "AP50": 52.0, "APs": float("nan"), "AP/a": 25.0, "count": 8}
    old = tmp_path / "old"
    old.mkdir()
    (old / "run.json").write_text(json.dumps({**common, "task": "detect", "weights": "weights_ema.safetensors",
                                              "val": {}, "ema_val": fractions, "ema_holdout": None}))
    info = read_run_info(old)
    assert "metric_unit" not in info
    got = shipped_metrics(info)
    assert got.keys() == percent.keys() and got["count"] == 8
    for key in ("AP", "AP50", "AP/a"):
        assert got[key] == pytest.approx(percent[key])
    assert got["APs"] != got["APs"]  # NaN stays NaN
    assert shipped_metrics(info, "holdout") is None  # not evaluated: nothing to scale

    new = tmp_path / "new"
    new.mkdir()
    write_run_info(new, **common, task="detect", weights="weights.safetensors", val={"AP": 33.8, "AP50": 52.0})
    info = read_run_info(new)
    assert info["metric_unit"] == "percent" and shipped_metrics(info) == {"AP": 33.8, "AP50": 52.0}

    classify = {**common, "weights": "weights.safetensors", "val": {"top1": 76.3, "top5": 93.0}}
    assert shipped_metrics(classify) == {"top1": 76.3, "top5": 93.0}  # no unit recorded: top-1 was always %
