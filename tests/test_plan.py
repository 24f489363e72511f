"""The layer plan agrees with the modules the builder makes from it: widths, strides, SE widths,
residuals, spatial sizes (forward hooks), feature taps, and MACs (``torch.utils.flop_counter``).

Everything runs on the meta device, so even EfficientNet-L2 at 800 px costs about a second.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import pytest
import torch
from torch import nn

import effml
from effml.detection.mobiledet import MOBILEDET_TABLES, mobiledet_spec
from effml.errors import SpecError
from effml.layers import BatchNormAct2d, MixConv2d
from effml.models import EfficientNetFeatures
from effml.models.builder import BLOCK_MODULES, build_block
from effml.models.counting import count_macs
from effml.models.fuse import FUSE_PAIRS, fuse_for_inference
from effml.spec import BLOCK_KINDS, BlockSpec, NetworkSpec
from effml.spec.plan import RESOLVE, ConvPlan, FeatureInfo, LayerPlan, NetworkPlan, plan

ZOO = [n for n in effml.list_models(task="classify") if isinstance(effml.get_entry(n).spec(), NetworkSpec)]
MOBILEDETS = [f"mobiledet_{v}" for v in MOBILEDET_TABLES]
NAMES = ZOO + MOBILEDETS


@lru_cache(maxsize=None)
def _spec(name: str) -> NetworkSpec:
    if name.startswith("mobiledet_"):
        return mobiledet_spec(name.removeprefix("mobiledet_"))
    return effml.get_entry(name).spec()


def _meta(make: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return make()


def _conv_facts(conv: nn.Module) -> tuple[int, int, tuple[int, ...], set[int], bool]:
    """(in, out, kernels, strides, depthwise) of a conv or a MixConv, summed over its groups."""
    parts = list(conv.values()) if isinstance(conv, MixConv2d) else [conv]
    assert all(isinstance(p, nn.Conv2d) for p in parts), conv
    depthwise = all(p.groups == p.in_channels == p.out_channels for p in parts)
    assert depthwise or all(p.groups == 1 for p in parts), conv
    return (sum(p.in_channels for p in parts), sum(p.out_channels for p in parts),
            tuple(p.kernel_size[0] for p in parts), {p.stride[0] for p in parts}, depthwise)


def _check_conv(planned: ConvPlan, conv: nn.Module) -> None:
    cin, cout, kernels, strides, depthwise = _conv_facts(conv)
    assert (cin, cout, kernels, strides, depthwise) == (
        planned.in_channels, planned.out_channels, planned.kernel_size, {planned.stride}, planned.depthwise
    ), planned


def _check_block(layer: LayerPlan, block: nn.Module) -> None:
    assert type(block) is BLOCK_MODULES[layer.kind].cls
    assert block.has_skip == layer.residual
    assert block.drop_path_rate == layer.drop_path_rate
    se = getattr(block, "se", nn.Identity())
    assert layer.se_channels == (0 if isinstance(se, nn.Identity) else se.conv_reduce.out_channels)
    for planned in layer.convs:
        _check_conv(planned, block.get_submodule(planned.name))
    # no conv of the module is missing from the plan
    assert sum(isinstance(m, nn.Conv2d) for m in block.modules()) == sum(len(c.kernel_size) for c in layer.convs)


def _drop_batchnorms(model: nn.Module) -> nn.Module:
    """The model with each BN replaced by its activation: BNs add no MACs, and on the meta device
    their decomposition is most of the flop counter's time."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, BatchNormAct2d):
                setattr(module, name, child.act)
    return model


def _block_shapes(model: nn.Module) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Hooks that record (input shape, output shape) of every block, keyed 'stage.index'."""
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            def hook(_m, args, out, key=f"{s}.{i}"):  # type: ignore[no-untyped-def]
                shapes[key] = (args[0].shape, out.shape)
            block.register_forward_hook(hook)
    return shapes


def _check_sizes(net: NetworkPlan, shapes: dict[str, tuple[torch.Size, torch.Size]]) -> None:
    positions: dict[int, int] = {}
    for layer in net.layers:
        i = positions[layer.stage] = positions.get(layer.stage, -1) + 1
        x, y = shapes[f"{layer.stage}.{i}"]
        assert tuple(x[1:]) == (layer.in_channels, *layer.input_size), layer
        assert tuple(y[1:]) == (layer.out_channels, *layer.output_size), layer
    assert len(shapes) == len(net.layers)


@pytest.mark.parametrize("name", NAMES)
def test_plan_matches_the_built_network_and_the_flop_counter(name):
    spec = _spec(name)
    net = plan(spec)
    model = _meta(lambda: effml.create_model(spec))
    blocks = [b for stage in model.blocks for b in stage]
    assert len(blocks) == len(net.layers) == spec.num_blocks
    for layer, block in zip(net.layers, blocks):
        _check_block(layer, block)
    _check_conv(net.stem, model.conv_stem)
    _check_conv(net.head, model.conv_head)
    if net.classifier is None:
        assert isinstance(model.classifier, nn.Identity)
    else:
        assert (model.classifier.in_features, model.classifier.out_features) == (
            net.classifier.in_channels, net.classifier.out_channels)
    shapes = _block_shapes(model)
    # The plan's MACs equal FlopCounterMode's exactly for all 40 networks (worst gap 0).
    assert net.macs() == count_macs(_drop_batchnorms(model), spec.resolution)
    _check_sizes(net, shapes)


@pytest.mark.parametrize("name", ["efficientnet_b0", "tf_efficientnet_b0", "tf_mixnet_s", "mixnet_m",
                                  "mobiledet_dsp", "mobiledet_gpu"])
def test_plan_sizes_and_macs_at_another_input_size(name):
    # odd sizes: TF 'SAME' rounds up (ceil), symmetric padding floors ((n - 1) // 2 + 1), identical
    spec, hw = _spec(name), (67, 45)
    net = plan(spec, hw)
    model = _meta(lambda: effml.create_model(spec))
    shapes = _block_shapes(model)
    assert net.macs() == count_macs(_drop_batchnorms(model), hw)
    _check_sizes(net, shapes)
    assert net.stem.output_size == ((hw[0] + 1) // 2, (hw[1] + 1) // 2)


@pytest.mark.parametrize("name", NAMES)
def test_plan_taps_are_the_feature_backbones_feature_info(name):
    spec = _spec(name)
    net = plan(spec)
    every = tuple(range(len(net.features)))
    backbone = _meta(lambda: EfficientNetFeatures(spec, out_indices=every))
    assert backbone.feature_info == list(net.features)
    assert [f.reduction for f in net.features] == [2, 4, 8, 16, 32]
    for tap in net.features:  # the tap is the output of its stage's last block
        last = net.stage(tap.stage)[-1]
        assert last.out_channels == tap.channels
        assert last.output_size == tuple(-(-spec.resolution // tap.reduction) for _ in range(2))


def test_feature_backbone_maps_have_the_planned_shapes():
    spec = _spec("tf_mixnet_s")
    net = plan(spec, (96, 80))
    backbone = _meta(lambda: EfficientNetFeatures(spec, out_indices=(0, 1, 2, 3, 4)))
    maps = backbone(torch.empty(1, 3, 96, 80, device="meta"))
    assert [tuple(m.shape[1:]) for m in maps] == [
        (f.channels, *net.stage(f.stage)[-1].output_size) for f in net.features]


def test_b0_plan_reads_as_the_paper_table():
    # EfficientNet-B0 (arXiv 1905.11946, Table 1): stage resolutions and widths; 0.39B FLOPs (Table 2)
    net = plan(_spec("efficientnet_b0"))
    assert net.stem.output_size == (112, 112) and net.stem.out_channels == 32
    last = [net.stage(s)[-1] for s in range(7)]
    assert [layer.output_size[0] for layer in last] == [112, 56, 28, 14, 14, 7, 7]
    assert [layer.out_channels for layer in last] == [16, 24, 40, 80, 112, 192, 320]
    assert [len(net.stage(s)) for s in range(7)] == [1, 2, 2, 3, 3, 4, 1]
    first = net.stage(1)[0]  # 16 in -> 96 expanded, SE from the block input: 16 * 0.25 = 4
    assert (first.in_channels, first.mid_channels, first.se_channels, first.stride) == (16, (96,), 4, 2)
    assert not first.residual and net.stage(1)[1].residual
    assert round(net.macs() / 1e9, 2) == 0.39
    assert net.features == (FeatureInfo(0, 16, 2), FeatureInfo(1, 24, 4), FeatureInfo(2, 40, 8),
                            FeatureInfo(4, 112, 16), FeatureInfo(6, 320, 32))


def test_tucker_plan_records_its_ranks():
    # MobileDet-DSP's stage-1 Tucker (arXiv 2004.14525 Fig. 3; TF ``_tucker_conv``): 32 -> round8(32 *
    # 0.25) = 8 -> round8(32 * 0.75) = 24 -> 32, no SE, residual
    tucker = [layer for layer in plan(_spec("mobiledet_dsp")).layers if layer.kind == "tucker"][0]
    assert (tucker.mid_channels, tucker.se_channels, tucker.residual) == ((8, 24), 0, True)
    assert [c.name for c in tucker.convs] == ["conv_pw", "conv_core", "conv_pwl"]


def test_drop_path_schedule_is_linear_over_all_blocks():
    spec = _spec("efficientnet_b0").replace(drop_path=0.2)
    rates = [layer.drop_path_rate for layer in plan(spec).layers]
    assert rates[0] == 0.0 and rates == sorted(rates) and rates[-1] == pytest.approx(0.2 * 15 / 16)
    model = _meta(lambda: effml.create_model(spec))
    assert [b.drop_path_rate for stage in model.blocks for b in stage] == rates


def test_every_block_kind_has_one_row_in_each_table():
    assert set(BLOCK_MODULES) == set(BLOCK_KINDS) == set(RESOLVE)
    for kind, module in BLOCK_MODULES.items():
        assert module.cls.__name__ == BLOCK_KINDS[kind].name
        assert FUSE_PAIRS[module.cls] == module.fuse_pairs


@pytest.mark.parametrize("row", [
    BlockSpec("ds", 16, kernel_size=(3, 5), se_ratio=0.25, proj_groups=2),
    BlockSpec("ir", 24, kernel_size=(3, 5, 7), expand_ratio=6, se_ratio=0.5, exp_groups=2, proj_groups=2),
    BlockSpec("er", 16, expand_ratio=4, se_ratio=0.25),
    BlockSpec("tucker", 16, input_compression=0.25, output_compression=0.75),
], ids=lambda row: row.kind)
def test_declared_fuse_pairs_cover_every_batchnorm_of_the_kind(row):
    spec = NetworkSpec(stages=((row,),), stem_channels=16, head_channels=32, num_classes=4, resolution=32)
    layer = plan(spec).layers[0]
    block = build_block(layer, spec).eval()
    pairs = BLOCK_MODULES[row.kind].fuse_pairs
    assert {bn for _, bn in pairs} == {n for n, m in block.named_children() if isinstance(m, nn.BatchNorm2d)}
    for conv, _ in pairs:
        assert isinstance(getattr(block, conv), (nn.Conv2d, MixConv2d))
    for m in block.modules():  # non-trivial statistics, so a wrong fold shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    fused = fuse_for_inference(block)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 16, 9, 9)
    torch.testing.assert_close(fused(x), block(x), atol=1e-5, rtol=1e-4)


def test_plan_errors_say_what_to_fix():
    spec = _spec("efficientnet_b0")
    with pytest.raises(SpecError, match="input_size"):
        plan(spec, (0, 224))
    with pytest.raises(SpecError, match="NetworkSpec"):
        plan("efficientnet_b0")  # type: ignore[arg-type]
    even = spec.replace(stages=((BlockSpec("ir", 16, kernel_size=(3, 4), expand_ratio=2),),))
    with pytest.raises(SpecError, match="odd kernel sizes"):
        plan(even)
    assert plan(even.replace(padding="same")).layers[0].output_size == (112, 112)
