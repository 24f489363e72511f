"""ONNX export + verification, BN folding, benchmark results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import effml
from effml.deploy import RUNTIMES, BenchResult, benchmark, export_onnx, fuse_for_inference, onnx_session
from effml.errors import EffmlError, ExportError, InputError
from effml.layers import Conv2dSame, MixConv2d


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so folding has something to get wrong."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)


# ---------------------------------------------------------------- export


def test_export_onnx_tf_same_padding_dynamic_batch(tmp_path):
    model = effml.create_model("tf_efficientnet_b0")  # Conv2dSame: asymmetric TF padding
    _randomize_bn(model)
    model.train()
    path = tmp_path / "sub" / "b0.onnx"
    report = export_onnx(model, path, input_size=64)

    assert model.training, "export must restore the caller's mode"
    assert report.path == path and report.files == (path,)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert report.input_shape == (1, 3, 64, 64) and report.dynamic_batch
    assert sorted(p.name for p in path.parent.iterdir()) == ["b0.onnx"]  # no temp leftovers

    session = onnx_session(path, threads=1)
    assert session.get_inputs()[0].shape[0] not in (1, 2)  # symbolic batch
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        expected = model.eval()(x).numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert got.shape == (3, 1000)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


class _TracesDifferently(nn.Module):
    """Adds 1 only while being exported: ONNX Runtime and PyTorch must disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y + 1.0 if torch.compiler.is_exporting() else y


def test_export_mismatch_raises_and_keeps_old_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("previous export")
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_onnx(_TracesDifferently(), path, input_size=16)
    assert path.read_text() == "previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


class _OffByAThousandth(nn.Module):
    """Outputs around ``scale``, 1e-3 off while being exported."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.net, self.scale = _tiny(), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.net(x)) + self.scale
        return y + 1e-3 if torch.compiler.is_exporting() else y


def test_the_export_check_scales_with_the_outputs(tmp_path):
    # logits near 1000 (as a BigNAS child's reach 650): float32 keeps 1e-4 of them, 1e-3 is rounding
    report = export_onnx(_OffByAThousandth(1000.0), tmp_path / "big.onnx", input_size=16)
    assert 5e-4 < report.max_abs_diff < 2e-3 and report.rtol == 1e-5
    with pytest.raises(ExportError, match=r"differs from PyTorch by 0.001.*atol 0.0001 \+ rtol 1e-05"):
        export_onnx(_OffByAThousandth(1.0), tmp_path / "small.onnx", input_size=16)  # near 1: a real mismatch
    assert not (tmp_path / "small.onnx").exists()


def test_export_mismatch_leaves_no_file(tmp_path):
    with pytest.raises(ExportError):
        export_onnx(_TracesDifferently(), tmp_path / "m.onnx", input_size=16, dynamic_batch=False)
    assert list(tmp_path.iterdir()) == []


def test_export_static_batch(tmp_path):
    path = tmp_path / "tiny.onnx"
    report = export_onnx(_tiny(), path, input_size=(16, 12), batch_size=2, dynamic_batch=False)
    assert report.input_shape == (2, 3, 16, 12) and not report.dynamic_batch
    assert onnx_session(path).get_inputs()[0].shape == [2, 3, 16, 12]


def test_export_and_session_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        onnx_session(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_text("not a model")
    with pytest.raises(InputError, match="junk.onnx"):
        onnx_session(tmp_path / "junk.onnx")
    with pytest.raises(InputError, match="directory"):
        export_onnx(_tiny(), tmp_path, input_size=16)


# ---------------------------------------------------------------- BN folding


@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_b0", "mixnet_s", "tf_mixnet_s"])
def test_fuse_for_inference_matches_unfused(name):
    torch.manual_seed(0)
    model = effml.create_model(name).eval()
    _randomize_bn(model)
    fused = fuse_for_inference(model)

    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original is untouched"
    n_same = sum(isinstance(m, Conv2dSame) for m in model.modules())
    assert sum(isinstance(m, Conv2dSame) for m in fused.modules()) == n_same
    assert sum(isinstance(m, MixConv2d) for m in fused.modules()) == sum(
        isinstance(m, MixConv2d) for m in model.modules())
    assert not torch.equal(fused.conv_stem.weight, model.conv_stem.weight)

    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        feats, feats_fused = model.forward_features(x), fused.forward_features(x)
        logits, logits_fused = model(x), fused(x)
    assert feats.abs().max() > 0.1  # a comparison of near-zero maps would prove nothing
    torch.testing.assert_close(feats_fused, feats, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits_fused, logits, atol=1e-4, rtol=0)


def test_fuse_features_backbone_and_sequential():
    backbone = effml.create_model("mixnet_s", features_only=True).eval()
    _randomize_bn(backbone)
    seq = _tiny()
    _randomize_bn(seq)
    x = torch.randn(1, 3, 32, 32)
    for model in (backbone, seq):
        fused = fuse_for_inference(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        with torch.inference_mode():
            out, out_fused = model(x), fused(x)
        torch.testing.assert_close(out_fused, out, atol=1e-4, rtol=0)


def test_fuse_warns_about_unknown_structure():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.norm = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.conv(x))

    with pytest.warns(UserWarning, match="left 1"):
        fused = fuse_for_inference(Odd())
    assert isinstance(fused.norm, nn.BatchNorm2d)


# ---------------------------------------------------------------- benchmark


def test_benchmark_results_cover_every_runtime_and_batch():
    model = _tiny()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)  # not 1, whatever the process had (tests/conftest.py: 1 under xdist)
    try:
        results = benchmark(model, batch_sizes=(1, 2), input_size=16, runtimes=RUNTIMES,
                            warmup=1, iters=3, threads=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads_before)
    assert [(r.runtime, r.batch_size) for r in results] == [
        (rt, b) for rt in RUNTIMES for b in (1, 2)]
    for r in results:
        assert isinstance(r, BenchResult)
        assert r.input_size == 16 and r.iters == 3 and r.threads == 1
        assert 0 < r.p50_ms <= r.p90_ms
        assert r.images_per_s == pytest.approx(r.batch_size * 1e3 / r.mean_ms)
        assert set(r.as_dict()) >= {"runtime", "batch_size", "p50_ms", "p90_ms", "images_per_s"}
    assert model[0].weight.is_contiguous()  # channels_last is undone on the caller's model


def test_benchmark_times_a_peer_in_the_same_rounds_and_gives_ratios():
    from effml.deploy.benchmark import EFFML_ONLY, fastest, ratios
    runtimes = ("eager", "fused", "onnxruntime")
    results = benchmark(_tiny(), batch_sizes=(1, 2), input_size=16, runtimes=runtimes, warmup=1, iters=3,
                        threads=1, peer=_tiny(), peer_name="timm")
    rows = [(r.library, r.runtime, r.batch_size) for r in results]
    expected = []
    for rt in runtimes:
        for b in (1, 2):
            expected += [("effml", rt, b)] + ([] if rt in EFFML_ONLY else [("timm", rt, b)])
    assert rows == expected  # no peer row for BN folding, which only effml's tables can do
    ratio = ratios(results)
    assert set(ratio) == {(rt, b) for rt in ("eager", "onnxruntime") for b in (1, 2)}
    ours = {(r.runtime, r.batch_size): r.p50_ms for r in results if r.library == "effml"}
    for r in results:
        if r.library == "timm":
            assert ratio[r.runtime, r.batch_size] == pytest.approx(r.p50_ms / ours[r.runtime, r.batch_size])
    best = fastest(results, "effml", 2)
    assert best.p50_ms == min(r.p50_ms for r in results if r.library == "effml" and r.batch_size == 2)


def test_peer_models_are_the_same_architecture_or_a_clear_error():
    from effml.deploy.peers import peer_model
    timm_b0 = peer_model("efficientnet_b0", "timm")
    ours = effml.create_model("efficientnet_b0")
    assert sum(p.numel() for p in timm_b0.parameters()) == sum(p.numel() for p in ours.parameters())
    tv = peer_model("efficientnet_b0", "torchvision")
    assert not tv.training and abs(sum(p.numel() for p in tv.parameters()) / 5.29e6 - 1) < 0.02
    det = peer_model("tf_efficientdet_d0", "effdet")  # no download of a backbone either
    assert sum(p.numel() for p in det.parameters()) == 3_880_067  # google/automl's D0 count
    with pytest.raises(InputError, match="timm has no model 'spinenet_49'"):
        peer_model("spinenet_49", "timm")
    with pytest.raises(InputError, match="choose from timm, torchvision, effdet"):
        peer_model("efficientnet_b0", "keras")


def test_benchmark_rejects_unknown_runtime():
    with pytest.raises(EffmlError, match="tensorrt"):
        benchmark(_tiny(), runtimes=("eager", "tensorrt"), input_size=16, iters=1, warmup=0)


def test_export_writes_the_opset_asked_for_or_refuses(tmp_path):
    path = tmp_path / "tiny.onnx"
    assert export_onnx(_tiny(), path, input_size=16, opset=19).opset == 19
    with pytest.raises(ExportError, match="cannot write ONNX opset 9: .*nothing was written"):
        export_onnx(_tiny(), tmp_path / "old.onnx", input_size=16, opset=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]
