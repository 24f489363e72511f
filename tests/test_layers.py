"""Layers: TF 'SAME' padding, MixConv split, SE width, stochastic depth, feature taps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effml
from effml.layers import (
    Conv2dSame, MixConv2d, create_conv2d, drop_path, drop_path_rates, same_pad_1d,
    se_reduced_channels, split_channels,
)


@pytest.mark.parametrize("size, k, s, expected", [
    (224, 3, 2, (0, 1)), (224, 5, 2, (1, 2)), (225, 3, 2, (1, 1)), (225, 5, 2, (2, 2)),
    (7, 3, 1, (1, 1)), (8, 5, 1, (2, 2)), (1, 3, 2, (1, 1)), (2, 3, 2, (0, 1)),
])
def test_same_padding_matches_the_tf_formula(size, k, s, expected):
    # timm get_same_padding: stride 2 on even sizes pads (0, 1) for k3 and (1, 2) for k5
    assert same_pad_1d(size, k, s) == expected


@pytest.mark.parametrize("hw", [(16, 16), (17, 17), (16, 17), (9, 12)])
@pytest.mark.parametrize("k, s", [(3, 2), (5, 2), (4, 1)])
def test_conv2d_same_static_and_dynamic_agree_with_explicit_padding(hw, k, s):
    torch.manual_seed(0)
    static = Conv2dSame(4, 6, k, s, input_size=hw)
    dynamic = Conv2dSame(4, 6, k, s)
    dynamic.load_state_dict(static.state_dict())
    x = torch.randn(2, 4, *hw)
    top, bottom = same_pad_1d(hw[0], k, s)
    left, right = same_pad_1d(hw[1], k, s)
    expected = F.conv2d(F.pad(x, (left, right, top, bottom)), static.weight, static.bias, s)
    assert torch.allclose(static(x), expected, atol=1e-6)
    assert torch.allclose(dynamic(x), expected, atol=1e-6)
    assert expected.shape[-2:] == (-(-hw[0] // s), -(-hw[1] // s))
    # a static conv fed another size falls back to the dynamic rule
    y = torch.randn(1, 4, hw[0] + 1, hw[1] + 3)
    assert torch.allclose(static(y), dynamic(y), atol=1e-6)


@pytest.mark.parametrize("hw", [(16, 16), (17, 16), (9, 12), (2, 3)])
@pytest.mark.parametrize("k, s, d", [(3, 2, 1), (5, 2, 1), (4, 1, 1), (3, 2, 2)])
@pytest.mark.parametrize("in_ch, out_ch, groups", [(4, 4, 4), (4, 8, 4), (4, 6, 2)])
def test_conv2d_same_grouped_and_depthwise_paths_match_explicit_padding(hw, k, s, d, in_ch, out_ch, groups):
    # a depthwise conv runs asymmetric pads as a zero tap in front of the kernel (a faster CPU
    # path); grouped and dilated convs pad explicitly: all three must be the same function
    torch.manual_seed(0)
    conv = Conv2dSame(in_ch, out_ch, k, s, dilation=d, groups=groups, bias=True, input_size=hw)
    x = torch.randn(2, in_ch, *hw, requires_grad=True)
    top, bottom = same_pad_1d(hw[0], k, s, d)
    left, right = same_pad_1d(hw[1], k, s, d)
    expected = F.conv2d(F.pad(x, (left, right, top, bottom)), conv.weight, conv.bias, s, 0, d, groups)
    got = conv(x)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)
    from effml.layers.padding import tf_same_as_written
    with tf_same_as_written():  # the explicit pad, as MAC counting runs it: the same function
        assert torch.allclose(conv(x), expected, atol=1e-5)
    # and it trains the same: gradients reach the weight (not the padded copy) and the input
    grads = torch.autograd.grad(got.square().sum(), (x, conv.weight))
    ref = torch.autograd.grad(expected.square().sum(), (x, conv.weight))
    for g, r in zip(grads, ref):
        assert g.shape == r.shape and torch.allclose(g, r, atol=1e-4)


@pytest.mark.parametrize("k, s", [(3, 2), (2, 2), (3, 1), (5, 2), (3, 3)])
def test_max_pool_same_equals_an_explicit_minus_inf_pad(k, s):
    from effml.layers.padding import MaxPool2dSame
    pool = MaxPool2dSame(k, s)
    for h in range(1, 19):
        for w in (1, 2, 7, 16, 17):
            x = torch.randn(1, 2, h, w)
            top, bottom = same_pad_1d(h, k, s)
            left, right = same_pad_1d(w, k, s)
            expected = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), k, s)
            assert torch.equal(pool(x), expected), (h, w)


def test_same_convs_that_need_no_padding_logic_are_plain_convs():
    assert type(create_conv2d(8, 8, 3, 1, depthwise=True, padding="same")) is nn.Conv2d
    assert type(create_conv2d(8, 8, 3, 2, depthwise=True, padding="same")) is Conv2dSame
    assert type(create_conv2d(8, 8, 3, 2, depthwise=True, padding="")) is nn.Conv2d


def test_tf_b0_has_exactly_the_reference_dynamic_convs():
    # timm tf_efficientnet_b0's Conv2dSame: conv_stem and the stride-2 depthwise convs of blocks 1, 2, 3 and 5
    model = effml.create_model("tf_efficientnet_b0")
    same = sorted(n for n, m in model.named_modules() if isinstance(m, Conv2dSame))
    assert same == ["blocks.1.0.conv_dw", "blocks.2.0.conv_dw", "blocks.3.0.conv_dw",
                    "blocks.5.0.conv_dw", "conv_stem"]


def test_mixconv_splits_channels_with_the_remainder_first():
    assert split_channels(720, 5) == [144] * 5
    assert split_channels(10, 3) == [4, 3, 3]
    conv = create_conv2d(10, 10, (3, 5, 7), depthwise=True)
    assert isinstance(conv, MixConv2d) and conv.splits == [4, 3, 3]
    assert [c.kernel_size for c in conv.values()] == [(3, 3), (5, 5), (7, 7)]
    assert [c.groups for c in conv.values()] == [4, 3, 3]
    # each group sees only its own channels
    x = torch.zeros(1, 10, 9, 9)
    x[:, 4:7] = 1.0
    y = conv(x)
    assert y[:, :4].abs().sum() == 0 and y[:, 7:].abs().sum() == 0 and y[:, 4:7].abs().sum() > 0


def test_channel_arithmetic_has_one_source_shared_with_the_layer_plan():
    from effml.spec import channels
    assert effml.layers.se_reduced_channels is channels.se_reduced_channels
    assert effml.layers.split_channels is channels.split_channels
    assert effml.layers.scale_filters is channels.scale_filters
    assert channels.expanded_channels(40, 6) == 240 and channels.expanded_channels(24, 0.5) == 12


def test_se_width_comes_from_the_block_input():
    # tensorflow/tpu efficientnet_model.py MBConvBlock: B0 stage 3 block 0, 16 in -> 96 mid -> SE 96 -> 4 -> 96
    assert se_reduced_channels(16, 0.25) == 4
    block = effml.create_model("efficientnet_b0").blocks[1][0]
    assert block.se.conv_reduce.weight.shape == (4, 96, 1, 1)
    assert isinstance(block.se.act1, nn.SiLU)


def test_drop_path_schedule_is_linear_in_block_index():
    # tensorflow/tpu efficientnet_model.py Model.call: B0 with 0.2 -> [0, .0125, ..., .1875]
    rates = drop_path_rates(0.2, 16)
    assert rates[0] == 0 and rates[1] == pytest.approx(0.0125) and rates[-1] == pytest.approx(0.1875)
    model = effml.create_model("efficientnet_b0", drop_path=0.2)
    got = [b.drop_path_rate for stage in model.blocks for b in stage]
    assert got == pytest.approx(rates)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2, 2)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    values = per_sample.unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.75)
    assert (per_sample == per_sample[:, :1]).all()  # one decision per sample
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(drop_path(x, 0.25, training=False), x)


@pytest.mark.parametrize("name, channels", [
    ("efficientnet_b0", [24, 40, 112, 320]),
    ("mixnet_s", [24, 40, 120, 200]),
    ("tf_efficientnet_lite0", [24, 40, 112, 320]),
])
def test_features_only_returns_stride_4_to_32_maps(name, channels):
    model = effml.create_model(name, features_only=True).eval()
    assert model.channels == channels and model.strides == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == channels
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_features_out_indices_select_taps_and_reject_bad_ones():
    model = effml.create_model("efficientnet_b0", features_only=True, out_indices=(0, 4))
    assert model.strides == [2, 32] and model.channels == [16, 320]
    with pytest.raises(effml.SpecError, match="out_indices"):
        effml.create_model("efficientnet_b0", features_only=True, out_indices=(5,))


def test_unknown_model_suggests_close_names():
    with pytest.raises(effml.UnknownModelError, match="efficientnet_b0") as info:
        effml.create_model("efficientnet_bo")
    assert "effml models" in str(info.value)
    with pytest.raises(effml.UnknownModelError, match="Did you mean: tf_mixnet_s"):
        effml.create_model("tf_mixnet_ss")


def test_weight_tag_sets_advprop_preprocessing():
    assert effml.get_entry("tf_efficientnet_b0.ap_in1k").preprocess.mean == (0.5, 0.5, 0.5)
    assert effml.get_entry("tf_efficientnet_lite0").preprocess.std == pytest.approx((128 / 255,) * 3)
    assert effml.get_entry("efficientnet_b0").preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
