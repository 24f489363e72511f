"""Weight files: timm and efficientnet-pytorch checkpoints give the reference outputs; bad ones fail."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

import effml
from effml import WeightsError
from effml.models import weights as weights_mod
from effml.models.weights import (
    LoadReport,
    convert_efficientnet_pytorch,
    detect_format,
    load_weights,
    read_checkpoint,
    save_weights,
)

timm = pytest.importorskip("timm")

ATOL = 1e-4


def _perturb_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-default BN statistics, so a BN that failed to load cannot match by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _calibrate_bn(model: torch.nn.Module) -> None:
    """BN statistics from one batch, so a deep random net's eval output still depends on its input."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: this batch's statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(5)))
    model.eval()


def _assert_informative(ref: torch.Tensor) -> None:
    """A reference output that is near-constant would let a bad load pass the comparison."""
    assert ref.std() > 0.1
    assert (ref[0] - ref[1]).abs().max() > 0.1


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    """A randomly initialised timm tf_efficientnet_lite0 with non-trivial BN statistics."""
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    _perturb_bn(model, seed=1)
    return model.eval()


@pytest.fixture(scope="module")
def lite0_path(lite0: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "lite0.pth"
    torch.save(lite0.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------- timm checkpoints


def _write_timm(kind: str, state: dict[str, torch.Tensor], folder: Path) -> Path:
    if kind == "pth":
        path = folder / "w.pth"
        torch.save(state, path)
    elif kind == "safetensors":
        path = folder / "w.safetensors"
        safetensors.torch.save_file(state, str(path))
    elif kind == "safetensors_named_bin":  # the format is read from the bytes, not the name
        path = folder / "w.bin"
        safetensors.torch.save_file(state, str(path))
    elif kind == "container_ddp":
        path = folder / "w.pth.tar"
        wrapped = {f"module.{k}": v for k, v in state.items()}
        torch.save({"state_dict": wrapped, "epoch": 3, "arch": "tf_efficientnet_lite0"}, path)
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["pth", "safetensors", "safetensors_named_bin", "container_ddp"])
def test_timm_checkpoint_gives_timm_logits(kind, lite0, image, tmp_path):
    path = _write_timm(kind, lite0.state_dict(), tmp_path)
    model = effml.create_model("tf_efficientnet_lite0", weights=path).eval()
    with torch.no_grad():
        ours, ref = model(image), lite0(image)
    _assert_informative(ref)
    assert (ours - ref).abs().max().item() < ATOL


def test_load_report(lite0_path):
    model = effml.create_model("tf_efficientnet_lite0")
    report = load_weights(model, lite0_path)
    assert isinstance(report, LoadReport)
    assert report.source == str(lite0_path)
    assert report.format == "timm"
    assert report.loaded == len(model.state_dict())
    assert report.ignored == ()


def test_prefer_ema_picks_the_ema_weights(tmp_path):
    plain, ema = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    path = tmp_path / "train.pth"
    torch.save({"state_dict": plain, "state_dict_ema": ema, "optimizer": {"lr": 0.1}}, path)
    assert torch.equal(read_checkpoint(path)["w"], plain["w"])
    assert torch.equal(read_checkpoint(path, prefer_ema=True)["w"], ema["w"])


def test_non_strict_keeps_missing_values(lite0):
    state = dict(lite0.state_dict())
    del state["conv_head.weight"]
    model = effml.create_model("tf_efficientnet_lite0")
    own_head = model.conv_head.weight.detach().clone()
    with pytest.raises(WeightsError, match="conv_head.weight"):
        load_weights(model, state)
    report = load_weights(model, state, strict=False)
    assert report.missing == ("conv_head.weight",)
    assert torch.equal(model.conv_head.weight, own_head)
    assert torch.equal(model.conv_stem.weight, state["conv_stem.weight"])


# ---------------------------------------------------------------- efficientnet-pytorch


def test_efficientnet_pytorch_b0_gives_lukemelas_outputs(image, tmp_path):
    lm_module = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(3)
    lm = lm_module.EfficientNet.from_name("efficientnet-b0")  # random init, no download
    lm.set_swish(memory_efficient=False)
    _calibrate_bn(lm)
    with torch.no_grad():
        lm._fc.weight.mul_(10)  # PyTorch's default Linear init gives logits of ~0.01
    path = tmp_path / "lukemelas_b0.pth"
    torch.save(lm.state_dict(), path)

    assert detect_format(read_checkpoint(path)) == "efficientnet_pytorch"
    model = effml.create_model("tf_efficientnet_b0")
    report = load_weights(model, path)
    assert report.format == "efficientnet_pytorch"
    assert report.loaded == len(lm.state_dict()) == len(model.state_dict())
    model.eval()
    with torch.no_grad():
        ours, ref = model(image), lm(image)
    _assert_informative(ref)
    assert (ours - ref).abs().max().item() < ATOL


def test_efficientnet_pytorch_key_mapping():
    model = effml.create_model("efficientnet_b0")
    lm_keys = {
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.running_var": "bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
        "_blocks.0._bn1.weight": "blocks.0.0.bn1.weight",
        "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",  # DS: projection is conv_pw
        "_blocks.0._bn2.bias": "blocks.0.0.bn2.bias",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight",  # MBConv: expansion
        "_blocks.1._bn0.weight": "blocks.1.0.bn1.weight",
        "_blocks.2._bn1.weight": "blocks.1.1.bn2.weight",
        "_blocks.15._se_expand.bias": "blocks.6.0.se.conv_expand.bias",
        "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
        "_blocks.15._bn2.running_mean": "blocks.6.0.bn3.running_mean",
        "_blocks.16._bn2.weight": "_blocks.16._bn2.weight",  # no 17th block: left for the report
        "_conv_head.weight": "conv_head.weight",
        "_bn1.bias": "bn2.bias",
        "_fc.weight": "classifier.weight",
    }
    state = {k: torch.zeros(1) for k in lm_keys}
    assert detect_format(state) == "efficientnet_pytorch"
    assert list(convert_efficientnet_pytorch(state, model)) == list(lm_keys.values())
    assert detect_format(model.state_dict()) == "timm"


# ---------------------------------------------------------------- mismatches


def test_wrong_architecture_is_refused_and_model_untouched(tmp_path):
    path = tmp_path / "mixnet_s.pth"
    torch.save(timm.create_model("mixnet_s").state_dict(), path)
    model = effml.create_model("efficientnet_b0")
    before = _snapshot(model)
    with pytest.raises(WeightsError) as info:
        load_weights(model, path)
    msg = str(info.value)
    assert str(path) in msg
    for part in ("missing", "unexpected", "shape mismatch", "model name", "unchanged",
                 "conv_stem.weight [16,3,3,3] vs [32,3,3,3]"):
        assert part in msg, part
    assert "drop_classifier" not in msg
    _assert_unchanged(model, before)


def test_other_num_classes_needs_drop_classifier(lite0, lite0_path):
    model = effml.create_model("tf_efficientnet_lite0", num_classes=10)
    before = _snapshot(model)
    with pytest.raises(WeightsError, match="drop_classifier") as info:
        load_weights(model, lite0_path)
    assert "classifier.weight [1000,1280] vs [10,1280]" in str(info.value)
    _assert_unchanged(model, before)
    with pytest.raises(WeightsError, match="drop_classifier"):
        effml.create_model("tf_efficientnet_lite0", num_classes=10, weights=lite0_path)

    report = load_weights(model, lite0_path, drop_classifier=True)
    assert set(report.ignored) == {"classifier.weight", "classifier.bias"}
    ckpt = lite0.state_dict()
    for k, v in model.state_dict().items():
        expected = before[k] if k.startswith("classifier.") else ckpt[k]
        assert torch.equal(v, expected), k

    via_factory = effml.create_model("tf_efficientnet_lite0", num_classes=10, weights=lite0_path,
                                     drop_classifier=True)
    assert via_factory.classifier.out_features == 10
    assert torch.equal(via_factory.conv_head.weight, ckpt["conv_head.weight"])


def test_features_only_ignores_the_head(lite0, lite0_path, image):
    model = effml.create_model("tf_efficientnet_lite0", features_only=True).eval()
    report = load_weights(model, lite0_path)
    head = {k for k in lite0.state_dict() if k.startswith(("conv_head.", "bn2.", "classifier."))}
    assert set(report.ignored) == head and head

    ref = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(1, 2, 3, 4))
    ref.load_state_dict({k: v for k, v in lite0.state_dict().items() if k not in head})
    ref.eval()
    with torch.no_grad():
        ours, theirs = model(image), ref(image)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < ATOL


# ---------------------------------------------------------------- unsafe and broken files


class _Payload:
    """Unpickling this runs code: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_pickle_with_code_is_refused(protocol, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        payload = {"conv_stem.weight": torch.zeros(1), "x": _Payload(marker)}
        pickle.dump(payload, f, protocol=protocol)
    model = effml.create_model("efficientnet_b0")
    before = _snapshot(model)
    with pytest.raises(WeightsError) as info:
        load_weights(model, path)
    assert str(path) in str(info.value) and "code" in str(info.value)
    assert not marker.exists()
    _assert_unchanged(model, before)
    # The payload is real: an unrestricted unpickler does run it.
    with path.open("rb") as f:
        pickle.load(f)  # noqa: S301 - deliberate, inside tmp_path
    assert marker.exists()


def _broken_file(kind: str, tmp_path: Path, lite0_path: Path) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(256).replace(b"\x80", b"\x00").replace(b"PK", b"pk"))
    elif kind == "truncated_zip":
        data = lite0_path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_safetensors":
        full = tmp_path / "full.safetensors"
        safetensors.torch.save_file({"w": torch.zeros(1000)}, str(full))
        data = full.read_bytes()
        path = tmp_path / f"{kind}.safetensors"
        path.write_bytes(data[: len(data) - 1000])
    elif kind == "not_a_state_dict":
        torch.save([torch.zeros(1)], path)
    elif kind == "no_tensors":
        torch.save({"epoch": 3}, path)
    else:
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "random", "truncated_zip",
                                  "truncated_safetensors", "not_a_state_dict", "no_tensors"])
def test_unreadable_files_name_the_path(kind, tmp_path, lite0_path):
    path = _broken_file(kind, tmp_path, lite0_path)
    with pytest.raises(WeightsError) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(WeightsError):
        effml.create_model("efficientnet_lite0", weights=path)


# ---------------------------------------------------------------- saving


def test_save_weights_round_trip(lite0_path, image, tmp_path):
    model = effml.create_model("tf_efficientnet_lite0", weights=lite0_path).eval()
    path = save_weights(model, tmp_path / "out" / "lite0.safetensors", metadata={"arch": "lite0"})
    assert path.exists()
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["arch"] == "lite0"
    saved = safetensors.torch.load_file(str(path))
    expected = model.state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], v) for k, v in expected.items())
    again = effml.create_model("tf_efficientnet_lite0", weights=path).eval()
    with torch.no_grad():
        assert torch.equal(again(image), model(image))


def test_save_weights_shared_and_strided_tensors(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    state = {"a": base, "tied": base, "transposed": base.T, "row": base[1]}
    path = save_weights(state, tmp_path / "shared.safetensors")
    back = safetensors.torch.load_file(str(path))
    for k, v in state.items():
        assert torch.equal(back[k], v), k


def _fail_midway(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"half a file")
    raise OSError("disk full")


def _fail_rename(src, dst):
    raise OSError("rename failed")


@pytest.mark.parametrize("where", ["write", "rename"])
def test_failed_save_keeps_old_file_and_leaves_no_temp(where, tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_weights({"w": torch.ones(4)}, path)
    old = path.read_bytes()
    if where == "write":
        monkeypatch.setattr(safetensors.torch, "save_file", _fail_midway)
    else:
        monkeypatch.setattr(weights_mod.os, "replace", _fail_rename)
    with pytest.raises(WeightsError, match="unchanged"):
        save_weights({"w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    assert torch.equal(read_checkpoint(path)["w"], torch.ones(4))


def test_the_class_count_hint_names_options_that_exist(lite0_path, tmp_path):
    with pytest.raises(WeightsError, match=r"num_classes=1000 \(effml predict/detect/export/bench: "
                                           r"--num-classes 1000\).*model\.drop_classifier=true"):
        effml.create_model("tf_efficientnet_lite0", num_classes=10, weights=lite0_path)
    # a detector's class bias has one entry per anchor: the hint still names the class count
    torch.save(effml.create_model("tf_efficientdet_lite0", num_classes=3).state_dict(), tmp_path / "d3.pth")
    with pytest.raises(WeightsError, match="--num-classes 3"):
        effml.create_model("tf_efficientdet_lite0", weights=tmp_path / "d3.pth")


@pytest.mark.parametrize("legacy", [False, True])
def test_a_torch_save_file_named_safetensors_is_read_by_its_content(lite0, tmp_path, legacy):
    path = tmp_path / "lite0.safetensors"  # the name says safetensors, the bytes say torch.save
    torch.save(lite0.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    model = effml.create_model("tf_efficientnet_lite0")
    load_weights(model, path)
    assert torch.equal(model.conv_stem.weight, lite0.conv_stem.weight)
    pickle.dump({"code": print}, (tmp_path / "evil.safetensors").open("wb"))
    with pytest.raises(WeightsError, match="refused to load .*evil.safetensors"):
        load_weights(model, tmp_path / "evil.safetensors")


# ---------------------------------------------------------------- tensor dtypes and values


@pytest.mark.parametrize("bad", ["int64", "bool", "nan", "inf"])
def test_integer_or_non_finite_weights_are_refused_and_model_untouched(bad, lite0, tmp_path):
    state = {k: v.clone() for k, v in lite0.state_dict().items()}
    if bad in ("int64", "bool"):  # integer copies of float weights: load_state_dict would cast them
        state = {k: v.to(getattr(torch, bad)) if v.is_floating_point() else v for k, v in state.items()}
    else:
        state["conv_head.weight"][0, 0] = float(bad)
        state["bn2.running_var"][3] = -float(bad)  # a buffer too
    path = tmp_path / f"{bad}.safetensors"
    safetensors.torch.save_file(state, str(path))
    model = effml.create_model("tf_efficientnet_lite0")
    before = _snapshot(model)
    with pytest.raises(WeightsError) as info:
        load_weights(model, path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "The model was left unchanged" in msg
    if bad in ("nan", "inf"):
        assert "NaN or inf values in 2 tensor(s): bn2.running_var, conv_head.weight;" in msg
    else:
        assert f"bn1.bias ({bad})" in msg and "... and" in msg and "float16 or bfloat16" in msg
        assert "num_batches_tracked" not in msg  # integer buffers may stay integer
    _assert_unchanged(model, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_upcast_and_integer_buffers_stay(dtype, lite0):
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in lite0.state_dict().items()}
    assert state["bn1.num_batches_tracked"].dtype == torch.int64
    model = effml.create_model("tf_efficientnet_lite0")
    load_weights(model, state)
    assert model.conv_stem.weight.dtype == torch.float32
    assert torch.equal(model.conv_stem.weight, state["conv_stem.weight"].float())
    assert model.bn1.num_batches_tracked.dtype == torch.int64
    load_weights(model, {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
