"""MobileDets + SSDLite: the four backbones against the reference layer tables, the new block kinds
(fused IBN, Tucker) in notation and as layers, SSD anchors, golden parameter / MAC counts, and
learning on the shapes set."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import effml
import effml.detection.ssdlite  # noqa: F401  registers ssdlite_mobiledet_* and the "ssdlite" kind
from effml.deploy import fuse_for_inference
from effml.detection.mobiledet import mobiledet_spec
from effml.zoo import spec_from_dict, spec_to_dict
from effml.detection.ssd_anchors import SSDAnchorSpec
from effml.detection.ssdlite import SSDLite, ssdlite_mobiledet_spec
from effml.errors import SpecError
from effml.layers import DepthwiseSeparableConv, FusedMBConv, MBConv, SqueezeExcite, TuckerConv
from effml.models.network import EfficientNetFeatures
from effml.models.counting import count_macs, count_params
from effml.spec import BlockSpec, format_block, parse_block

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- the reference tables

# tensorflow/models ssd_mobiledet_feature_extractor.py, transcribed (filters before multiplier, k3 unless k5,
# `r` residual, `nr` none, `xN` repeated rows); parsed below independently of mobiledet.py.
REFERENCE_TABLES = {
    "cpu": (16, """
        IBN-noexp 8
        IBN e4 s2 16 nr
        IBN e8 s2 32 nr | IBN e4 32 r | IBN e4 32 r | IBN e4 32 r
        IBN e8 k5 s2 72 nr | IBN e8 72 r | IBN e4 k5 72 r | IBN e4 72 r | IBN e8 72 nr | IBN e8 72 r x3
        IBN e8 k5 s2 104 nr | IBN e4 k5 104 r | IBN e4 k5 104 r | IBN e4 104 r | IBN e8 144 nr
    """),
    "dsp": (32, """
        IBN-noexp 24
        Fused e4 s2 32 nr | Fused e4 32 r | IBN e4 32 r | Tucker(0.25,0.75) 32 r
        Fused e8 s2 64 nr | IBN e4 64 r | Fused e4 64 r | Fused e4 64 r
        Fused e8 s2 120 nr | IBN e4 120 r | IBN e8 120 r | IBN e8 120 r | Fused e8 144 nr | IBN e8 144 r x3
        IBN e4 s2 160 nr | IBN e4 160 r | Fused e4 160 r | Tucker(0.75,0.75) 160 r | IBN e8 240 nr
    """),
    "edgetpu": (32, """
        Tucker(0.25,0.75) 16 nr
        Fused e8 s2 16 nr | Fused e4 16 r | Fused e8 16 r | Fused e4 16 r
        Fused e8 k5 s2 40 nr | Fused e4 40 r x3
        IBN e8 s2 72 nr | IBN e8 72 r | Fused e4 72 r | Fused e4 72 r | IBN e8 k5 96 nr | IBN e8 k5 96 r | IBN e8 96 r x2
        IBN e8 k5 s2 120 nr | IBN e8 120 r | IBN e4 k5 120 r | IBN e8 120 r | IBN e8 k5 384 nr
    """),
    "gpu": (32, """
        Tucker(0.25,0.25) 16 nr
        Fused e8 s2 32 nr | Tucker(0.25,0.25) 32 r x3
        Fused e8 s2 64 nr | Fused e8 64 r x2 | Fused e4 64 r
        Fused e8 s2 128 nr | Fused e4 128 r x3 | Fused e8 128 nr | Fused e8 128 r x3
        Fused e4 s2 128 nr | Fused e4 128 r x3 | IBN e8 384 nr
    """),
}
C4_C5_CHANNELS = {"cpu": (72, 144), "dsp": (144, 240), "edgetpu": (96, 384), "gpu": (128, 384)}


def _reference_layers(text: str) -> list[list[tuple]]:
    """Per endpoint, rows (block, expansion or (r_in, r_out), kernel, stride, filters, residual)."""
    stages = []
    for line in text.strip().splitlines():
        rows = []
        for cell in line.split("|"):
            tokens = cell.split()
            block, rest = tokens[0], tokens[1:]
            m = re.fullmatch(r"Tucker\(([\d.]+),([\d.]+)\)", block)
            expansion = (float(m[1]), float(m[2])) if m else 1.0
            kernel, stride, repeats, residual = 3, 1, 1, False  # IBN-noexp: no shortcut in the reference
            for t in rest:
                if t in ("r", "nr"):
                    residual = t == "r"
                elif t[0] in "eksx" and t[1:].isdigit():
                    value = int(t[1:])
                    if t[0] == "e":
                        expansion = float(value)
                    elif t[0] == "k":
                        kernel = value
                    elif t[0] == "s":
                        stride = value
                    else:
                        repeats = value
                else:
                    filters = int(t)
            kind = "tucker" if m else {"IBN": "ibn", "IBN-noexp": "noexp", "Fused": "fused"}[block]
            rows += [(kind, expansion, kernel, stride, filters, residual)] * repeats
        stages.append(rows)
    return stages


def _round8(c: float) -> int:
    return max(8, int(c / 8 + 0.5) * 8)  # TF _scale_filters rounding


def _built_layers(block: nn.Module) -> tuple:
    """The same row read off a built block."""
    if isinstance(block, TuckerConv):
        cin, cout = block.conv_pw.in_channels, block.conv_pwl.out_channels
        assert block.conv_pw.out_channels in (_round8(cin * 0.25), _round8(cin * 0.75))
        ranks = (block.conv_pw.out_channels, block.conv_core.out_channels)
        ratios = tuple(next(r for r in (0.25, 0.75) if _round8(c * r) == rank)
                       for c, rank in zip((cin, cout), ranks))
        return ("tucker", ratios, block.conv_core.kernel_size[0], block.conv_core.stride[0], cout, block.has_skip)
    if isinstance(block, FusedMBConv):
        conv = block.conv_exp
        return ("fused", conv.out_channels / conv.in_channels, conv.kernel_size[0], conv.stride[0],
                block.conv_pwl.out_channels, block.has_skip)
    if isinstance(block, MBConv):
        dw = block.conv_dw
        return ("ibn", block.conv_pw.out_channels / block.conv_pw.in_channels, dw.kernel_size[0], dw.stride[0],
                block.conv_pwl.out_channels, block.has_skip)
    assert isinstance(block, DepthwiseSeparableConv)
    dw = block.conv_dw
    return ("noexp", 1.0, dw.kernel_size[0], dw.stride[0], block.conv_pw.out_channels, block.has_skip)


def _se_and_act(block: nn.Module) -> tuple[SqueezeExcite | None, type]:
    se = getattr(block, "se", None)
    acts = {type(m) for m in block.modules() if isinstance(m, (nn.ReLU6, nn.Hardswish, nn.SiLU, nn.ReLU))}
    assert len(acts) == 1, acts
    return (se if isinstance(se, SqueezeExcite) else None), acts.pop()


@pytest.mark.parametrize("variant", sorted(REFERENCE_TABLES))
def test_backbone_reproduces_the_reference_table(variant):
    stem, text = REFERENCE_TABLES[variant]
    expected = _reference_layers(text)
    with torch.device("meta"):
        net = EfficientNetFeatures(mobiledet_spec(variant), out_indices=(0, 1, 2, 3, 4))
    assert net.conv_stem.out_channels == stem and net.conv_stem.stride == (2, 2)
    built = [[_built_layers(b) for b in stage] for stage in net.blocks]
    assert built == expected
    assert net.strides == [2, 4, 8, 16, 32]  # one stage per endpoint C1..C5
    # CPU: h-swish and SE on every IBN, SE width round8(expanded channels * 0.25) (TF ssd_mobiledet_feature_extractor);
    # the others: ReLU6, no SE.
    for block in (b for stage in net.blocks for b in stage):
        se, act = _se_and_act(block)
        if variant == "cpu":
            assert act is nn.Hardswish and se is not None
            assert se.conv_reduce.out_channels == _round8(se.conv_reduce.in_channels * 0.25)
        else:
            assert act is nn.ReLU6 and se is None
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.eps == 0.01 and bn.momentum == 0.01 for bn in bns)  # TF decay 0.99, eps 0.01


@pytest.mark.parametrize("variant", sorted(REFERENCE_TABLES))
def test_ssdlite_maps_strides_and_channels(variant):
    with torch.device("meta"):
        net = effml.create_model(f"ssdlite_mobiledet_{variant}")
    assert net.backbone.strides == [16, 32] and tuple(net.backbone.channels) == C4_C5_CHANNELS[variant]
    assert net.channels == [*C4_C5_CHANNELS[variant], 512, 256, 256, 128]
    assert net.spec.feature_sizes(320, 320) == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    assert net.spec.resolution == 320 and net.num_classes == 90


def test_ssdlite_forward_shapes_match_the_anchors():
    torch.manual_seed(0)
    net = effml.create_model("ssdlite_mobiledet_cpu", num_classes=3).eval()
    with torch.no_grad():
        cls, box = net(torch.randn(1, 3, 320, 320))
    sizes = [20, 10, 5, 3, 2, 1]
    assert [c.shape for c in cls] == [(1, a * 3, s, s) for a, s in zip([3, 6, 6, 6, 6, 6], sizes)]
    assert [b.shape for b in box] == [(1, a * 4, s, s) for a, s in zip([3, 6, 6, 6, 6, 6], sizes)]
    flat = effml.detection.flatten_outputs(cls, 3)
    assert flat.shape == (1, 2034, 3) and net.anchors(320, 320).shape == (2034, 4)
    # class prior bias -4.6 (sigmoid ~ 0.01) on every map; box coder with SSD's scales
    assert all(torch.allclose(p.bias, torch.full_like(p.bias, -4.6)) for p in net.class_net.predict)
    assert net.box_coder.scale_factors == (10.0, 10.0, 5.0, 5.0)
    # BN folding knows every conv -> BN pair of the new blocks, extras and predictors
    fused = fuse_for_inference(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        cls1, box1 = net(x)
        cls2, box2 = fused(x)
    assert max((a - b).abs().max().item() for a, b in zip(cls1 + box1, cls2 + box2)) < 1e-4


# ---------------------------------------------------------------- anchors


def test_ssd_anchor_count_and_values_at_320():
    # 3 anchors on the 20x20 C4 map (reduce_boxes_in_lowest_layer), 6 (5 ratios + the interpolated
    # scale) on 10x10, 5x5, 3x3, 2x2, 1x1: 1200 + 600 + 150 + 54 + 24 + 6 = 2034 (TF OD API create_ssd_anchors).
    spec = SSDAnchorSpec()
    assert spec.num_anchors() == [3, 6, 6, 6, 6, 6]
    assert 20 * 20 * 3 + (100 + 25 + 9 + 4 + 1) * 6 == 2034
    assert [round(s, 4) for s in spec.scales()] == [0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0]
    net = SSDLite(ssdlite_mobiledet_spec("cpu"))
    anchors = net.anchors(320, 320)
    assert anchors.shape == (2034, 4)
    # By hand, xyxy pixels. Map 0 (stride 16, centre 8): scale 0.1 ratio 1 -> 32 px square;
    # scale 0.2 ratio 2 -> 64*sqrt(2) wide, 64/sqrt(2) high.
    r2 = math.sqrt(2)
    torch.testing.assert_close(anchors[0], torch.tensor([-8.0, -8.0, 24.0, 24.0]))
    torch.testing.assert_close(anchors[1], torch.tensor([8 - 32 * r2, 8 - 16 * r2, 8 + 32 * r2, 8 + 16 * r2]))
    torch.testing.assert_close(anchors[2], torch.tensor([8 - 16 * r2, 8 - 32 * r2, 8 + 16 * r2, 8 + 32 * r2]))
    # map 0, row 0, column 1: centre (24, 8)
    torch.testing.assert_close(anchors[3], torch.tensor([8.0, -8.0, 40.0, 24.0]))
    # map 1 (10x10, stride 32, first centre 16): scale 0.35 -> 112 px; the sixth anchor is the
    # interpolated scale sqrt(0.35 * 0.5) at ratio 1
    first1 = 1200
    torch.testing.assert_close(anchors[first1], torch.tensor([-40.0, -40.0, 72.0, 72.0]))
    half = math.sqrt(0.35 * 0.5) * 320 / 2
    torch.testing.assert_close(anchors[first1 + 5], torch.tensor([16 - half, 16 - half, 16 + half, 16 + half]))
    # last map (1x1, centre 160): scale 0.95 -> 304 px, interpolated sqrt(0.95 * 1.0)
    torch.testing.assert_close(anchors[-6], torch.tensor([8.0, 8.0, 312.0, 312.0]))
    half = math.sqrt(0.95) * 320 / 2
    torch.testing.assert_close(anchors[-1], torch.tensor([160 - half, 160 - half, 160 + half, 160 + half]))
    # a non-square input: sizes follow the shorter side, centres each axis's own stride
    wide = net.anchors(320, 640)
    assert wide.shape[0] == 20 * 40 * 3 + (10 * 20 + 5 * 10 + 3 * 5 + 2 * 3 + 1 * 2) * 6
    torch.testing.assert_close(wide[0], torch.tensor([-8.0, -8.0, 24.0, 24.0]))


def test_bad_ssd_specs_are_clear_errors():
    with pytest.raises(SpecError, match="num_layers"):
        ssdlite_mobiledet_spec("cpu").replace(extra_depths=(512, 256, 256))
    with pytest.raises(SpecError, match="min_scale"):
        SSDAnchorSpec(min_scale=0.9, max_scale=0.2)
    with pytest.raises(SpecError, match="unknown MobileDet variant"):
        mobiledet_spec("tpu")


# ---------------------------------------------------------------- golden counts

# ssdlite_mobiledet_*_320x320_coco_sync_4x4.config headers: (params M, MulAdds B) of the SSDLite MobileDets at 320 px.
REFERENCE_COUNTS = {"cpu": (4.21, 0.45), "edgetpu": (4.20, 1.53), "dsp": (7.16, 2.82), "gpu": (13.11, 5.07)}
# Measured here (90 classes, trainable parameters; MACs of convs by torch's flop counter):
#   cpu      4,157,030 params (-1.3%)    443,957,440 MACs (-1.3%)
#   edgetpu  4,137,006 params (-1.5%)  1,532,738,368 MACs (+0.2%)
#   dsp      7,093,262 params (-0.9%)  2,815,989,568 MACs (-0.1%)
#   gpu     13,059,614 params (-0.4%)  5,072,703,168 MACs (+0.1%)
# The parameter gap is all bookkeeping: the reference counts every TF variable, which adds the
# BN moving mean and variance (2 x 20,184 / 24,776 / 28,632 / 19,952 BN channels) and the
# background class slot TF's predictor keeps (add_background_class: (C + 1) x anchors per map,
# 8,025 / 9,537 / 8,817 / 9,633). With both: 4,205,423 / 4,196,095 / 7,159,343 / 13,109,151,
# equal to the reference's 4.21 / 4.20 / 7.16 / 13.11 M at its precision, for all four.
# MACs: only the CPU model is off by more than the table's rounding; its SE gates multiply
# 3,184,000 activations the flop counter (convs and matmuls only) leaves out, and with them
# 447,141,440 rounds to the reference 0.45 B.
SE_GATE_MULTIPLIES = {"cpu": 3_184_000}


@pytest.mark.parametrize("variant", sorted(REFERENCE_COUNTS))
def test_params_and_macs_match_the_reference(variant):
    ref_params, ref_macs = REFERENCE_COUNTS[variant]
    with torch.device("meta"):
        net = SSDLite(ssdlite_mobiledet_spec(variant))
    params, macs = count_params(net), count_macs(net, 320)
    assert abs(params / (ref_params * 1e6) - 1) < 0.02 and abs(macs / (ref_macs * 1e9) - 1) < 0.015
    bn_channels = sum(m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    background = sum((c + 1) * a for c, a in zip(net.channels, net.spec.anchors.num_anchors()))
    assert round((params + 2 * bn_channels + background) / 1e6, 2) == ref_params
    assert round((macs + SE_GATE_MULTIPLIES.get(variant, 0)) / 1e9, 2) == ref_macs


# ---------------------------------------------------------------- notation and spec JSON

new_blocks = st.one_of(
    st.builds(BlockSpec, kind=st.just("er"), out_channels=st.integers(1, 512), repeats=st.integers(1, 8),
              kernel_size=st.sampled_from([(3,), (5,)]), stride=st.sampled_from([1, 2]),
              expand_ratio=st.sampled_from([4.0, 8.0, 6.0]), se_ratio=st.sampled_from([0.0, 0.25, 1.0, 2.0]),
              act=st.sampled_from([None, "relu6", "hard_swish"]), skip=st.booleans()),
    st.builds(BlockSpec, kind=st.just("tucker"), out_channels=st.integers(1, 512), repeats=st.integers(1, 8),
              kernel_size=st.sampled_from([(3,), (5,)]), stride=st.sampled_from([1, 2]),
              input_compression=st.sampled_from([0.25, 0.75, 0.5]),
              output_compression=st.sampled_from([0.25, 0.75, 1.0]), act=st.sampled_from([None, "relu6"]),
              skip=st.booleans()),
)


@given(new_blocks)
def test_new_block_kinds_round_trip_the_notation(block):
    assert parse_block(format_block(block)) == block


def test_new_block_notation_examples():
    er = parse_block("er_r1_k3_s2_e4_c32")  # timm's EdgeResidual string
    assert (er.kind, er.kernel_size, er.stride, er.expand_ratio, er.out_channels) == ("er", (3,), 2, 4.0, 32)
    tk = parse_block("tucker_r1_k3_s1_c32_ri0.25_ro0.75")
    assert (tk.input_compression, tk.output_compression, tk.out_channels) == (0.25, 0.75, 32)
    assert format_block(tk) == "tucker_r1_k3_s1_c32_ri0.25_ro0.75"
    # MobileDet-CPU's SE is round8(expanded * 0.25) = 2x the input channels of an e8 block
    assert format_block(mobiledet_spec("cpu").stages[2][0]) == "ir_r1_k3_s2_e8_c32_se2_noskip"
    for text, fragment in [
        ("tucker_r1_k3_s1_e4_c32", "no expansion"),
        ("tucker_r1_k3_s1_c32_se0.25", "no SE"),
        ("er_r1_k3.5_s1_e4_c32", "one kernel size"),
        ("ir_r1_k3_s1_e4_c32_ri0.5", "'tucker' blocks only"),
        ("ir_r1_k3_s1_e4_c32_se5", "se_ratio"),
    ]:
        with pytest.raises(SpecError, match=fragment):
            parse_block(text)


def test_ssdlite_spec_json_round_trips_and_rebuilds():
    spec = ssdlite_mobiledet_spec("dsp", num_classes=3)
    data = json.loads(json.dumps(spec_to_dict(spec)))
    assert data["kind"] == "ssdlite" and "tucker_r1_k3_s1_c32_ri0.25_ro0.75" in data["backbone"]["stages"][1]
    assert spec_from_dict(data) == spec
    with pytest.raises(SpecError, match="unknown key 'extra'"):
        spec_from_dict({**data, "extra": 1})


# ---------------------------------------------------------------- the new layers


@pytest.mark.parametrize("make", [
    lambda s, c_out, skip=True: FusedMBConv(16, c_out, 3, s, expand_ratio=4, se_ratio=0.5, act="relu6", skip=skip),
    lambda s, c_out, skip=True: TuckerConv(16, c_out, 3, s, input_compression=0.25, output_compression=0.75,
                                           skip=skip),
])
def test_new_blocks_shapes_and_residual(make):
    torch.manual_seed(0)
    x = torch.randn(2, 16, 12, 12)

    def zero_branch(block: nn.Module) -> nn.Module:
        last_bn = block.bn2 if isinstance(block, FusedMBConv) else block.bn3
        nn.init.zeros_(last_bn.weight)
        nn.init.zeros_(last_bn.bias)
        return block.eval()

    same = zero_branch(make(1, 16))
    assert same.has_skip and torch.equal(same(x), x)  # the branch is zero: only the shortcut is left
    noskip = zero_branch(make(1, 16, skip=False))
    assert not noskip.has_skip and torch.equal(noskip(x), torch.zeros_like(x))
    assert make(2, 24).eval()(x).shape == (2, 24, 6, 6) and not make(2, 16).has_skip
    assert make(1, 24).eval()(x).shape == (2, 24, 12, 12) and not make(1, 24).has_skip


def test_tucker_ranks_follow_the_reference_rounding():
    t = TuckerConv(32, 160, 3, input_compression=0.25, output_compression=0.75)
    assert (t.conv_pw.out_channels, t.conv_core.out_channels) == (8, 120)  # round8(8), round8(120)
    t = TuckerConv(20, 16, 3, input_compression=0.25, output_compression=0.25)
    assert (t.conv_pw.out_channels, t.conv_core.out_channels) == (8, 8)  # at least 8


def test_fused_mbconv_matches_timm_edge_residual():
    blocks = pytest.importorskip("timm.models._efficientnet_blocks")

    def se_layer(channels: int, act_layer: type, **kw) -> nn.Module:
        return blocks.SqueezeExcite(channels, rd_channels=12, act_layer=act_layer, **kw)

    torch.manual_seed(0)
    ref = blocks.EdgeResidual(24, 24, exp_kernel_size=3, stride=1, exp_ratio=4.0, act_layer=nn.ReLU6,
                              se_layer=se_layer)
    ours = FusedMBConv(24, 24, 3, 1, expand_ratio=4.0, se_ratio=0.5, act="relu6")  # SE 24 * 0.5 = 12
    ours.load_state_dict(ref.state_dict())  # timm's key names, no mapping
    x = torch.randn(4, 24, 10, 10)
    with torch.no_grad():
        ref(x), ours(x)  # training mode: both get the same non-trivial BN statistics
    ref.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


# ---------------------------------------------------------------- learning

CONFIG = ROOT / "configs" / "ssdlite_shapes.yaml"
# Learning bar: SSDLite + MobileDet-CPU (full width) at 128 px with configs/ssdlite_shapes.yaml
# (AdamW lr 5e-3, batch 8, cosine, EMA 0.999; 1 thread) on a cheaper problem than the config's: one
# class (circles; detect.shapes_classes=1) and 6 epochs (384 steps), about 100 s of CPU. Measured val
# AP50 (EMA, percent) over seeds 0, 1, 2: 51.0 (41.0), 40.5 (31.4), 43.3 (34.3); 5 epochs, seed 0:
# 18.2 (4.1); 4 epochs, seeds 0, 1: 4.8 and 0.5; untrained (1 step): 0.2. The bar is half the lowest
# seed, 100x the untrained score. (Before: three classes, 8 epochs, ~140 s: 17.0 and 6.6 for seed 0 on
# two machines; the full config's 12 epochs: 28.3.)
EPOCHS = 6
AP50_THRESHOLD = 20.0


@pytest.mark.slow
def test_ssdlite_mobiledet_cpu_learns_shapes(tmp_path):
    from effml.train.config import load_config
    from effml.train.engine import fit
    from effml.train.run_dir import load_run

    run_dir = tmp_path / "run"
    cfg = load_config(CONFIG, [f"run.dir={run_dir}", "train.threads=1", "train.seed=0", "detect.shapes_classes=1",
                               f"train.epochs={EPOCHS}", f"train.eval_every={EPOCHS}"])
    fit(cfg, quiet=True)
    info = json.loads((run_dir / "run.json").read_text())
    best = max(info["val"]["AP50"], info["ema_val"]["AP50"])
    assert best > AP50_THRESHOLD, f"AP50 {info['val']['AP50']:.1f} (EMA {info['ema_val']['AP50']:.1f})"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "step"]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.6 * losses[0]
    trained = load_run(run_dir)
    assert isinstance(trained.model, SSDLite) and trained.model.num_classes == 1
