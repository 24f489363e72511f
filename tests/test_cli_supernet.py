"""``effml supernet train / select / export`` as a user runs them: an exported child is an ordinary run
(predict, eval, ONNX export, fine-tuning) whose outputs equal the supernet's for that child; resume
and DDP train the same weights as one uninterrupted process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _effml_cli import ENV, effml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "bignas_digits.yaml"
# 16 px keeps the 1.25M-parameter supernet quick; the space's resolutions become 12/14/16
SMALL = ["data.image_size=16", "data.batch_size=16", "train.threads=1", "supernet.calibration_batches=2",
         "train.bn_recalibrate=2"]


def _overrides(run_dir: Path, *extra: str) -> list[str]:
    return [f"run.dir={run_dir}", *SMALL, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("supernet") / "run"
    effml("supernet", "train", str(CONFIG), *_overrides(run_dir, "train.max_steps=4"), "--quiet")
    return run_dir


def test_select_writes_the_best_child_per_target_with_a_plot(trained):
    out = effml("supernet", "select", str(trained), "--flops", "0.5M,0.9M", "--coarse-top", "2",
                "--mutations", "2")
    picked = json.loads((trained / "selection.json").read_text())
    assert [p["target"] for p in picked] == [5e5, 9e5]
    for p in picked:
        assert p["best"]["macs"] <= p["target"]
        assert len(p["scored"]) >= 2 and p["best"]["score"] == max(c["score"] for c in p["scored"])
    assert (trained / "selection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "held-out top-1" in out.stdout
    # a second selection keeps the first one's other target and replaces the one it repeats
    out = effml("supernet", "select", str(trained), "--flops", "0.9M,0.7M", "--coarse-top", "1", "--mutations", "0")
    again = json.loads((trained / "selection.json").read_text())
    assert [p["target"] for p in again] == [5e5, 7e5, 9e5] and again[0] == picked[0]
    assert "keeps 1 selection(s) at other targets and replaces 1 at these targets" in out.stdout


def test_an_exported_child_is_an_ordinary_run_equal_to_the_supernet_child(trained, tmp_path):
    from effml.search.oneshot.bignas import load_supernet
    from effml.spec.plan import plan
    from effml.train.run_dir import load_run
    from effml.zoo import create_model, load_spec

    child_dir = tmp_path / "child"
    effml("supernet", "export", str(trained), "--flops", "0.7M", "-o", str(child_dir))
    info = json.loads((child_dir / "run.json").read_text())
    spec = load_spec(child_dir / "model.json")
    assert info["macs"] == plan(spec).macs() <= 7e5 and info["input_size"] == spec.resolution
    # the weights load strictly into the plain network built from the spec: no supernet code
    plain = create_model(spec)
    plain.load_state_dict(load_file(child_dir / "weights.safetensors"), strict=True)
    # exactness: the supernet, calibrated the same way for that child, gives the same outputs
    with torch.no_grad():
        sup = load_supernet(trained)
        calibrated = sup.calibrated(sup.supernet.child_spec(spec))
        sup.supernet.load_child_buffers(spec, calibrated)
        x = torch.randn(4, 3, spec.resolution, spec.resolution)
        exported = load_run(child_dir).model
        torch.testing.assert_close(exported(x), sup.supernet.eval()(x, child=spec), rtol=0, atol=1e-5)
    # and every command takes it like any run
    ev = json.loads(effml("eval", str(child_dir), "--json").stdout)
    # one path: run.json's figure is the one `effml eval` gives (both read the images at the child's size)
    assert ev["clean"]["count"] == info["val"]["count"] == 359
    assert ev["clean"]["top1"] == pytest.approx(info["val"]["top1"], abs=1e-9)
    assert ev["clean"]["loss"] == pytest.approx(info["val"]["loss"], rel=1e-6)
    # 4 training steps leave logits near 100 on noise: 1e-2 is a 1e-4 relative agreement
    effml("export", str(child_dir), "--onnx", str(tmp_path / "child.onnx"), "--atol", "1e-2")
    bench = effml("bench", str(child_dir), "--batch-sizes", "1", "--iters", "2", "--warmup", "0",
                  "--runtimes", "eager", "--json")
    assert json.loads(bench.stdout)[0]["batch_size"] == 1
    tune = tmp_path / "tuned"
    effml("train", str(child_dir / "config.yaml"), f"model.weights={child_dir / 'weights.safetensors'}",
          f"run.dir={tune}", "train.max_steps=2", "--quiet")
    assert json.loads((tune / "run.json").read_text())["global_step"] == 2


def test_export_to_a_read_only_disk_is_one_line_before_any_work(trained, tmp_path):
    from _mounts import small_disk

    with small_disk(tmp_path / "ro", "1m", read_only=True) as ro:
        out = effml("supernet", "export", str(trained), "--flops", "0.5M", "-o", str(ro / "runs" / "child"),
                    check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: cannot create output folder {ro / 'runs'}: the file system is read-only")
    assert "selected" not in out.stdout  # refused before the selection's work


def test_export_refuses_an_existing_directory_and_a_child_outside_the_space(trained, tmp_path):
    from effml.errors import EffmlError, SearchError
    from effml.search.oneshot.bignas import export_child, load_supernet, select_child
    from effml.train.trainer import preserved_global_state
    from effml.zoo import load_spec

    (tmp_path / "taken").mkdir()
    out = effml("supernet", "export", str(trained), "--flops", "0.5M", "-o", str(tmp_path / "taken"), check=False)
    assert out.returncode == 2 and out.stderr.startswith("error:") and "already exists" in out.stderr
    with preserved_global_state():
        sup = load_supernet(trained)
        big = load_spec(trained / "spec.json").replace(head_channels=2048)
        with pytest.raises(SearchError, match="conv_head.weight"):
            export_child(sup, big, tmp_path / "c2")
        assert not (tmp_path / "c2").exists() and not list(tmp_path.glob(".c2.*"))
        with pytest.raises(SearchError, match="the smallest has"):
            select_child(sup, 1e3)
        with pytest.raises(EffmlError, match="ordinary training run"):
            (tmp_path / "plain").mkdir()
            for name in ("run.json", "config.yaml"):
                text = (trained / name).read_text()
                if name == "config.yaml":
                    text = text[:text.index("\nsupernet:")] + "\n"
                (tmp_path / "plain" / name).write_text(text)
            load_supernet(tmp_path / "plain")


def test_errors_name_the_setting(tmp_path):
    from effml.errors import EffmlError
    from effml.search.oneshot.bignas import load_supernet_config, train_supernet

    out = effml("supernet", "train", str(CONFIG), f"run.dir={tmp_path / 'r'}", "data.holdout=0", check=False)
    assert out.returncode == 2 and "data.holdout" in out.stderr
    with pytest.raises(EffmlError, match="not elastic"):
        train_supernet(load_supernet_config(CONFIG, [f"run.dir={tmp_path / 'r'}", "supernet.space=mnasnet"]))
    with pytest.raises(EffmlError, match="sandwhich"):
        load_supernet_config(CONFIG, ["supernet.sandwhich=false"])
    assert not (tmp_path / "r").exists()


def test_resume_continues_to_the_same_weights(trained, tmp_path):
    straight, resumed = trained, tmp_path / "resumed"  # trained: the same 4 steps, uninterrupted
    effml("supernet", "train", str(CONFIG), *_overrides(resumed, "train.max_steps=2"), "--quiet")
    effml("supernet", "train", "--resume", str(resumed), "train.max_steps=4", "--quiet")
    a, b = load_file(straight / "weights.safetensors"), load_file(resumed / "weights.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_of_another_kind_of_run_says_so(trained, tmp_path):
    out = effml("autohas", "--resume", str(trained), check=False)  # a supernet run
    assert out.returncode == 2 and "this is no AutoHAS run (its config.yaml has no autohas: section)" in out.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.yaml").write_text("model:\n  name: efficientnet_b0\n")  # a training run's config
    out = effml("supernet", "train", "--resume", str(plain), check=False)
    assert out.returncode == 2 and "this is no supernet run" in out.stderr and "effml train --resume" in out.stderr
    assert "Traceback" not in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_train_the_same_supernet_as_one(tmp_path):
    # BN frozen: each sample's gradient is then independent of how the batch is split (CPU has no
    # SyncBatchNorm); children leave parameters unused, which DDP must allow.
    common = ["train.max_steps=2", "model.freeze_bn=true", "model.drop_path=0.0", "model.dropout=0.0",
              "data.augment=none", "optim.name=sgd", "optim.lr=0.5", "train.bn_recalibrate=0"]
    single = tmp_path / "single"
    effml("supernet", "train", str(CONFIG), *_overrides(single, *common, "data.batch_size=16"), "--quiet")
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "effml", "supernet", "train", str(CONFIG), *_overrides(ddp, *common, "data.batch_size=8"),
           "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads((ddp / "run.json").read_text())
    assert info["processes"] == 2 and info["ranks_agree"] is True
    a, b = load_file(single / "weights.safetensors"), load_file(ddp / "weights.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
