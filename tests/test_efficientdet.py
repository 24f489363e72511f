"""EfficientDet fidelity: golden parameter counts, BiFPN topology, effdet outputs with the same
weights, paper FLOPs (google/automl hparams_config.py, efficientdet_arch_test.py; arXiv 1911.09070 Table 2)."""

from __future__ import annotations

import json

import pytest
import torch

from effml.detection.efficientdet import EFFICIENTDET_VARIANTS, EfficientDet, efficientdet_spec
from effml.detection.spec import BiFPNSpec, FpnNode, bifpn_nodes
from effml.zoo import spec_from_dict, spec_to_dict
from effml.errors import SpecError, WeightsError
from effml.zoo import create_model, list_models
from effml.models.counting import count_macs, count_params
from effml.zoo import profile_model
from effml.models.weights import load_weights

effdet = pytest.importorskip("effdet")

# google/automl efficientdet_arch_test.py golden counts (90 classes) = effdet's.
GOLDEN_PARAMS = {
    "d0": 3_880_067, "d1": 6_625_898, "d2": 8_097_039, "d3": 12_032_296, "d4": 20_723_675,
    "d5": 33_653_315, "d6": 51_871_782, "d7": 51_871_782, "d7x": 77_147_166,
    "lite0": 3_243_470, "lite1": 4_248_318, "lite2": 5_252_334, "lite3": 8_350_862,
    "lite3x": 9_280_862, "lite4": 15_130_894,
}
# Paper / automl README FLOPs in billions (arXiv 1911.09070 Table 2); the bar is 3% for D0-D4.
PAPER_GFLOPS = {"d0": 2.54, "d1": 6.10, "d2": 11.0, "d3": 24.9, "d4": 55.2}


def _effdet(name: str, size: int | None = None, meta: bool = False) -> torch.nn.Module:
    kwargs = {"image_size": (size, size)} if size else {}
    if meta:
        with torch.device("meta"):
            return effdet.create_model(name, pretrained=False, pretrained_backbone=False, **kwargs)
    return effdet.create_model(name, pretrained=False, pretrained_backbone=False, **kwargs)


def test_every_variant_is_registered_in_both_flavours():
    names = set(list_models("*efficientdet*"))
    for v in EFFICIENTDET_VARIANTS:
        assert f"tf_efficientdet_{v}" in names and f"efficientdet_{v}" in names


@pytest.mark.parametrize("variant", list(GOLDEN_PARAMS))
def test_param_count_equals_golden_and_effdet(variant):
    name = f"tf_efficientdet_{variant}"
    with torch.device("meta"):
        ours = create_model(name)
    assert count_params(ours) == GOLDEN_PARAMS[variant]
    assert count_params(_effdet(name, meta=True)) == GOLDEN_PARAMS[variant]


@pytest.mark.parametrize("variant", ["d0", "d1", "d2", "d3"])
def test_native_flavour_param_count_equals_effdet(variant):
    # effdet's PyTorch-native configs drop the bias before BN (effdet model_config.py: 2,304 fewer for D0).
    name = f"efficientdet_{variant}"
    with torch.device("meta"):
        assert count_params(create_model(name)) == count_params(_effdet(name, meta=True))


def test_class_count_changes_only_the_class_head():
    with torch.device("meta"):
        m = create_model("tf_efficientdet_d0", num_classes=3)
    # 9 anchors x (90 - 3) classes x 64 inputs (pointwise) + 9 x 87 biases fewer
    assert count_params(m) == GOLDEN_PARAMS["d0"] - 9 * 87 * 64 - 9 * 87


@pytest.mark.parametrize("variant", list(PAPER_GFLOPS))
def test_macs_within_3_percent_of_paper(variant):
    p = profile_model(f"tf_efficientdet_{variant}")
    gap = p.macs / 1e9 / PAPER_GFLOPS[variant] - 1
    assert abs(gap) < 0.03, f"{variant}: {p.macs / 1e9:.3f} GMACs vs paper {PAPER_GFLOPS[variant]} ({gap:+.2%})"


def test_bifpn_nodes_match_reference_listing():
    # google/automl tf2/fpn_configs.py: ids 5..12 for P3-P7
    expected = [(6, (3, 4)), (5, (2, 5)), (4, (1, 6)), (3, (0, 7)),
                (4, (1, 7, 8)), (5, (2, 6, 9)), (6, (3, 5, 10)), (7, (4, 11))]
    assert [(n.level, n.inputs) for n in bifpn_nodes(3, 7)] == expected
    p3p8 = bifpn_nodes(3, 8)
    assert len(p3p8) == 10 and p3p8[-1] == FpnNode(8, (5, 14))


def test_bad_bifpn_spec_is_a_clear_error():
    with pytest.raises(SpecError, match="node 0: inputs"):
        BiFPNSpec(64, 1, 3, 4, nodes=(FpnNode(3, (0, 2)),))
    with pytest.raises(SpecError, match="fusion"):
        BiFPNSpec(64, 1, fusion="mean")
    with pytest.raises(SpecError, match="no output for levels"):
        BiFPNSpec(64, 1, 3, 4, nodes=(FpnNode(3, (0, 1)),))


def test_spec_json_round_trip():
    spec = efficientdet_spec("d7x", tf_port=True, num_classes=7)
    text = json.dumps(spec_to_dict(spec))
    assert spec_from_dict(json.loads(text)) == spec
    bad = json.loads(text)
    bad["fpn_width"] = 3
    with pytest.raises(SpecError, match="fpn_width"):
        spec_from_dict(bad)


def _randomise_stats(state: dict, seed: int = 0) -> dict:
    """BN statistics and fusion weights away from their init, so every path carries signal."""
    g = torch.Generator().manual_seed(seed)
    for k, v in state.items():
        if k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif k.endswith("edge_weights"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
    return state


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("name,size", [
    ("tf_efficientdet_d0", 512),
    ("tf_efficientdet_d0", 320),
    ("efficientdet_d0", 256),
    ("tf_efficientdet_d1", 384),
    ("tf_efficientdet_lite0", 320),
])
def test_outputs_match_effdet_with_its_weights(name, size):
    ref = _effdet(name, size).eval()
    state = _randomise_stats(ref.state_dict())
    ours = create_model(name, resolution=size).eval()
    report = load_weights(ours, state)
    assert report.loaded == len(ours.state_dict())
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rc, rb = ref(x)
        oc, ob = ours(x)
    assert len(oc) == 5 and oc[0].shape == (2, 9 * 90, size // 8, size // 8)
    assert _max_diff(rc, oc) < 1e-4 and _max_diff(rb, ob) < 1e-4


@pytest.mark.slow
def test_d7x_p8_outputs_match_effdet():
    ref = _effdet("tf_efficientdet_d7x", 256).eval()
    ours = create_model("tf_efficientdet_d7x", resolution=256).eval()
    load_weights(ours, _randomise_stats(ref.state_dict()))
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        (rc, rb), (oc, ob) = ref(x), ours(x)
    assert len(oc) == 6 and oc[-1].shape[-1] == 1  # P3..P8, P8 is 1x1 at 256 px
    assert _max_diff(rc, oc) < 1e-4 and _max_diff(rb, ob) < 1e-4


def test_effdet_checkpoint_file_loads_and_drop_classifier(tmp_path):
    ref = _effdet("tf_efficientdet_d0", 256)
    path = tmp_path / "d0.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    ours = create_model("tf_efficientdet_d0", weights=path, resolution=256)
    assert torch.equal(ours.class_net.predict.conv_pw.weight, ref.class_net.predict.conv_pw.weight)
    with pytest.raises(WeightsError, match="drop_classifier"):
        create_model("tf_efficientdet_d0", num_classes=3, weights=path)
    few = create_model("tf_efficientdet_d0", num_classes=3, weights=path, drop_classifier=True)
    assert torch.equal(few.box_net.predict.conv_pw.weight, ref.box_net.predict.conv_pw.weight)
    assert few.class_net.predict.conv_pw.weight.shape[0] == 9 * 3


def test_reset_head_and_odd_input_size():
    m = create_model("efficientdet_d0", resolution=128).eval()
    m.reset_head(5)
    assert m.num_classes == 5
    with torch.no_grad():
        cls, box = m(torch.randn(1, 3, 131, 97))  # not a multiple of 128: sizes follow the input
    assert [c.shape[-2:] for c in cls] == [(17, 13), (9, 7), (5, 4), (3, 2), (2, 1)]
    assert cls[0].shape[1] == 9 * 5 and box[0].shape[1] == 9 * 4


def test_class_bias_prior():
    m = create_model("tf_efficientdet_d0", num_classes=4)
    assert isinstance(m, EfficientDet)
    bias = m.class_net.predict.conv_pw.bias
    assert torch.allclose(torch.sigmoid(bias), torch.full_like(bias, 0.01))
    assert torch.count_nonzero(m.box_net.predict.conv_pw.bias) == 0
    assert count_macs(m, 128) > 0
