"""Quantization-aware fine-tuning (``effml.train.qat``, ``train.qat``): it simulates the int8 graph
that ``effml export --int8`` writes, it comes off without a trace, a fine-tuned run exports, and a
refused int8 export names it as the next step."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from _effml_cli import run_effml
from torch import nn

import effml
from effml.deploy import quantize as quantize_mod
from effml.deploy.calibration import run_images
from effml.errors import ExportError, InputError
from effml.measure.int8 import quantize_onnx
from effml.measure.onnx import INPUT_NAME, onnx_program, onnx_session
from effml.spec import NetworkSpec, parse_arch
from effml.train.checkpoint import load_checkpoint
from effml.train.config import load_config
from effml.train.engine import fit
from effml.train.qat import (
    ActivationFakeQuant,
    WeightFakeQuant,
    calibrating,
    is_qat,
    load_observer_state,
    observer_state,
    prepare_qat,
    remove_qat,
)
from effml.train.resolve import resolve_model
from effml.zoo import spec_to_json

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# tests/test_train.py's small EfficientNet: MBConv with SE and swish, a residual, 20k parameters
TINY = NetworkSpec(
    stages=parse_arch([["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r1_k3_s2_e4_c24_se0.25"],
                       ["ir_r1_k5_s2_e4_c40_se0.25"]]),
    stem_channels=16, head_channels=128, num_classes=10, resolution=32, dropout=0.1, drop_path=0.1,
)


def _overrides(spec: Path, run: Path, *extra: str) -> list[str]:
    return [f"model.name={spec}", f"run.dir={run}", "data.image_size=32", "data.batch_size=32",
            "optim.name=adamw", "optim.lr=0.003", "train.threads=1", "train.log_interval=5", *extra]


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny.json"
    path.write_text(spec_to_json(TINY))
    return path


@pytest.fixture(scope="module")
def trained_run(tiny_spec, tmp_path_factory) -> Path:
    """Two epochs on the digits: about 93% val top-1 (seed 0), in ~10 s."""
    run = tmp_path_factory.mktemp("runs") / "digits"
    fit(load_config(None, _overrides(tiny_spec, run, "train.epochs=2", "train.ema_decay=0.99")), quiet=True)
    return run


# ---------------------------------------------------------------- the simulation


@pytest.mark.parametrize("qmax", [127, 64])
def test_per_channel_symmetric_quantization_commutes_with_channel_scaling(qmax):
    """What lets QAT quantize the unfolded conv weight: ORT quantizes w * gamma / sqrt(var + eps)
    (BN folded), one factor per output channel, and fq(c * w) = c * fq(w) for any c != 0."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 8, 3, 3, generator=g)
    c = torch.rand(32, generator=g) * 4 + 0.05
    c[::3] *= -1  # a negative BN gamma flips the channel
    c = c.view(-1, 1, 1, 1)
    fq = WeightFakeQuant(qmax)
    folded_then_quantized = fq(w * c)
    assert torch.allclose(folded_then_quantized, c * fq(w), rtol=1e-6, atol=0)
    # and the grid is ORT's: integers in [-qmax, qmax] times max|w| / qmax, per channel
    scale = (w * c).abs().amax((1, 2, 3), keepdim=True) / qmax
    levels = folded_then_quantized / scale
    assert torch.allclose(levels, levels.round(), atol=1e-4) and levels.round().abs().max() == qmax
    assert len(levels[0].round().unique()) > 20  # per channel, not one scale for the tensor


def test_a_folded_batchnorm_lands_on_the_same_int8_weights():
    conv, bn = nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)
        bn.running_var.uniform_(0.1, 3)
    factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().view(-1, 1, 1, 1)
    fq = WeightFakeQuant(127)
    w = conv.weight.detach()
    assert torch.allclose(fq(w * factor), fq(w) * factor, rtol=1e-6, atol=0)


def test_qat_keeps_plain_state_dicts_and_comes_off_without_a_trace():
    torch.manual_seed(0)
    model = effml.create_model(TINY).eval()
    plain = copy.deepcopy(model)
    keys = list(model.state_dict())
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    prepare_qat(model, reduce_range=False)
    assert is_qat(model)
    assert list(model.state_dict()) == keys  # same names, same order
    fresh = effml.create_model(TINY)
    fresh.load_state_dict(model.state_dict(), strict=True)  # a QAT model's state loads into the plain model
    model.load_state_dict(plain.state_dict(), strict=True)  # and the other way
    with pytest.raises(InputError, match="already quantization-aware"):
        prepare_qat(model)
    # every conv and linear (the SE convs and the classifier included) is quantized
    convs = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(isinstance(m, WeightFakeQuant) for m in model.modules()) == len(convs) == 17
    with torch.no_grad():
        with calibrating(model):
            model(x)
        quantized, reference = model(x), plain(x)
    assert not torch.equal(quantized, reference)
    assert (quantized - reference).abs().max() < 0.2 * reference.abs().max()  # int8 noise, not garbage
    remove_qat(model)
    assert not is_qat(model)
    assert not any(isinstance(m, (WeightFakeQuant, ActivationFakeQuant)) for m in model.modules())
    assert list(model.state_dict()) == keys
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.SiLU))
    with torch.no_grad():
        assert torch.equal(model(x), reference)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]


def test_observed_ranges_survive_a_checkpoint_and_a_mismatch_is_refused():
    """The ranges are left out of the state_dict, so a checkpoint carries them (observer_state): a
    resumed run's fresh model must quantize with the same ranges, not with none."""
    torch.manual_seed(0)
    trained, fresh = (prepare_qat(effml.create_model(TINY), reduce_range=False) for _ in range(2))
    trained.train()
    for _ in range(3):
        trained(torch.randn(4, 3, 32, 32))
    fresh.load_state_dict(trained.state_dict())
    x = torch.randn(2, 3, 32, 32)
    trained.eval(), fresh.eval()
    assert not torch.equal(trained(x), fresh(x))  # fresh observers: activations pass unquantized
    load_observer_state(fresh, observer_state(trained))
    assert torch.equal(trained(x), fresh(x))
    state = observer_state(trained)
    assert state and all(not torch.equal(v, torch.zeros_like(v)) for k, v in state.items() if k.endswith("observed"))
    with pytest.raises(InputError, match="does not fit the model"):
        load_observer_state(fresh, {k: v for k, v in state.items() if not k.startswith("conv_stem.")})


def test_gradients_pass_straight_through_to_the_float_weights():
    torch.manual_seed(0)
    model = prepare_qat(effml.create_model(TINY), reduce_range=False).train()
    x = torch.randn(4, 3, 32, 32)
    model(x).logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.conv_stem.parametrizations.weight.original.grad.abs().sum() > 0
    assert model.conv_stem.input_quant.observed  # training mode observes the ranges


@pytest.mark.parametrize("reduce_range", [False, True])
def test_qat_in_eval_mode_computes_what_the_ort_int8_model_computes(trained_run, tmp_path, reduce_range):
    """The fidelity test. The same weights go through two paths. One is ORT's int8 QDQ model
    (quantize_onnx, MinMax calibration). The other is the QAT model, calibrated on the same images
    (ORT's MinMax of the fp32 graph) and run in eval mode. The QAT model must follow int8 much more
    closely than fp32 does.

    Measured on this trained run (logits up to ~8), on 200 validation images. 8-bit weights: mean
    |QAT - int8| 0.029 against |fp32 - int8| 0.083, max 0.56 against 0.78, top-1 agreement 100%.
    7-bit: 0.035 against 0.140, max 0.58. The rest comes from int8 tensors the module hooks do not
    see (e.g. ORT's residual Add). Only the conv and linear inputs (the first version) gave
    0.074 against 0.083."""
    resolved = resolve_model(str(trained_run))
    net = resolved.net.eval()
    images = run_images(trained_run, resolved.preprocess, calibration=128, holdout=200)
    fp32_path, int8_path = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx_program(net, images.holdout[:2], ["logits"]).save(fp32_path, external_data=False)
    quantize_onnx(fp32_path, int8_path, images.calibration, reduce_range=reduce_range)
    fp32, int8 = (torch.from_numpy(onnx_session(p, 1).run(None, {INPUT_NAME: images.holdout.numpy()})[0])
                  for p in (fp32_path, int8_path))
    qat = prepare_qat(copy.deepcopy(net), reduce_range=reduce_range).eval()
    with torch.no_grad():
        with calibrating(qat):
            for x in images.calibration.split(16):
                qat(x)
        simulated = qat(images.holdout)
    ptq_error = (fp32 - int8).abs().mean()
    assert ptq_error > 0.03  # int8 does change the logits, so closeness below means something
    assert (simulated - int8).abs().mean() < 0.6 * ptq_error
    assert (simulated - int8).abs().max() < 1.0
    assert (simulated.argmax(1) == int8.argmax(1)).float().mean() >= 0.98


# ---------------------------------------------------------------- train.qat


def test_train_qat_fine_tunes_a_run_that_exports_as_int8(trained_run, tiny_spec, tmp_path):
    qat_run = tmp_path / "qat"
    proc = run_effml(["train", *_overrides(tiny_spec, qat_run, f"model.weights={trained_run / 'weights_ema.safetensors'}",
                                           "train.qat=true", "train.epochs=1", "optim.lr=0.0003",
                                           "train.ema_decay=0.99", "train.checkpoint_interval=1000",
                                           "--quiet")], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (qat_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "step"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    info = json.loads((qat_run / "run.json").read_text())
    assert info["val"]["top1"] >= 70.0  # the fine-tuning kept what the run had learnt (about 93%)
    # the checkpoint and the shipped weights are a plain model's
    state = load_checkpoint(qat_run / "checkpoints" / "last.pt")
    plain = effml.create_model(TINY)
    plain.load_state_dict(state["model"], strict=True)
    assert set(state["qat"]["model"]) and all(k.endswith(("min_val", "max_val", "observed")) for k in state["qat"]["model"])
    assert not any("parametrizations" in k or "quant" in k for k in state["model"])
    out = tmp_path / "qat.int8.onnx"
    proc = run_effml(["export", qat_run, "--onnx", out, "--int8", "--min-agreement", "0.9", "--threads", "1"],
                     timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and "int8 top-1 agreement" in proc.stdout


def test_train_qat_freezes_batchnorm_after_its_fraction_of_the_steps(tiny_spec, tmp_path):
    from effml.train.trainer import Trainer

    cfg = load_config(None, _overrides(tiny_spec, tmp_path / "r", "train.qat=true", "train.qat_freeze_bn=0.5",
                                       "train.max_steps=4", "data.limit_train=256"))
    t = Trainer(cfg)
    assert is_qat(t.model) and is_qat(t.ema.module) and t.bn_freeze_step == 2
    bn = t.model.bn1
    means = [bn.running_mean.clone()]
    for _ in range(4):
        t.step()
        means.append(bn.running_mean.clone())
    assert not torch.equal(means[0], means[1]) and not torch.equal(means[1], means[2])  # steps 1, 2 learn them
    assert torch.equal(means[2], means[3]) and torch.equal(means[3], means[4])  # frozen from step 3 on
    assert not bn.training and t.model.training


def test_train_qat_is_refused_for_a_detector(tmp_path):
    cfg = load_config(CONFIGS / "shapes_detection_scratch.yaml",
                      [f"run.dir={tmp_path / 'det'}", "train.qat=true", "data.limit_train=8"])
    with pytest.raises(InputError, match=r"train\.qat=true.*classifiers.*set train\.qat=false"):
        fit(cfg, quiet=True)
    assert not (tmp_path / "det" / "checkpoints").exists()


# ---------------------------------------------------------------- the refusal names QAT


def test_a_refused_int8_export_of_a_run_names_the_qat_command(trained_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from effml.cli.main import app

    monkeypatch.setattr(quantize_mod, "top1_agreement", lambda ref, got: (0.9, None, 0))
    out = CliRunner().invoke(app, ["export", str(trained_run), "--onnx", str(tmp_path / "m.int8.onnx"), "--int8",
                                   "--calibration-images", "8", "--holdout-images", "8", "--no-fallback",
                                   "--threads", "1"])
    assert out.exit_code != 0 and not (tmp_path / "m.int8.onnx").exists()
    text = " ".join(out.output.split())
    command = quantize_mod.qat_command(trained_run)
    assert command is not None and " ".join(command.split()) in text, text
    assert "quantization-aware" in text
    assert (f"effml train {trained_run / 'config.yaml'} model.weights={trained_run / 'weights_ema.safetensors'} "
            f"run.dir={trained_run.parent / 'digits-qat'} train.qat=true train.epochs=1") in command
    assert "optim.lr=0.0003" in command  # a tenth of the run's
    # the command it names is one the config accepts
    args = command.split()[3:]
    cfg = load_config(trained_run / "config.yaml", args)
    assert cfg.train.qat and cfg.model.weights.endswith("weights_ema.safetensors")


def test_export_int8_without_a_run_names_no_qat_command(tmp_path, monkeypatch):
    monkeypatch.setattr(quantize_mod, "top1_agreement", lambda ref, got: (0.5, None, 0))
    net = effml.create_model(TINY).eval()
    images = torch.randn(4, 3, 32, 32)
    with pytest.raises(ExportError) as err:
        quantize_mod.export_int8(net, tmp_path / "m.onnx", input_size=32, calibration=images, holdout=images,
                                 fallback=False)
    assert "train.qat" not in str(err.value) and err.value.qat_command is None
