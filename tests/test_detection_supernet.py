"""A detection supernet (MobileDets, arXiv 2004.14525: SSDLite over the IBN / fused IBN / Tucker
space, searched with TuNAS): every member runs on the shared weights exactly as the ordinary
SSDLite that ``create_model(spec)`` builds from the member's detector spec, with the extracted
weights loaded strictly; only the chosen op family learns; the head's tensors are the leading
input channels of one shared set; what a detection supernet cannot hold is refused by name."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from test_supernet_ops import _randomize

from effml.detection.ssdlite import SSDLite, SSDLiteSpec
from effml.errors import SearchError
from effml.search.oneshot.detection_supernet import SSDLiteSupernet
from effml.search.oneshot.supernet import MeanOfOps, block_kinds
from effml.search.spaces.catalog import mnasnet_space, mobiledet_space
from effml.search.spaces.search_space import Choice, SearchSpace
from effml.search.study.detection_proxy import detector_spec
from effml.zoo import create_model


def _outputs(out: tuple[list[torch.Tensor], list[torch.Tensor]]) -> list[torch.Tensor]:
    return [*out[0], *out[1]]


@pytest.mark.parametrize("kernels", ["shared", "separate"])
def test_every_member_is_the_ordinary_ssdlite_of_its_spec_with_the_extracted_weights(kernels):
    space = mobiledet_space(num_classes=3, resolution=64)
    torch.manual_seed(0)
    net = SSDLiteSupernet(space, kernels=kernels)
    _randomize(net)
    rng = random.Random(0)
    members = [space.random_member(rng).spec for _ in range(3)] + [space.smallest().spec]
    assert len({tuple(block_kinds(m).values()) for m in members}) > 1  # op choices differ among them
    x = torch.randn(2, 3, 64, 64)
    for member in members:
        spec = net.child_spec(member)
        assert spec == net.child_spec(detector_spec("ssdlite", member))  # the black-box search's detector
        assert isinstance(spec, SSDLiteSpec) and spec.num_classes == 3
        plain = create_model(spec)  # no supernet code
        assert isinstance(plain, SSDLite)
        plain.load_state_dict(net.extract(member).state_dict(), strict=True)
        for train in (False, True):
            net.train(train)
            plain.train(train)
            got, want = _outputs(net(x, child=member)), _outputs(plain(x))
            assert len(got) == len(want) == 12  # C4, C5 and four extra maps: classes, then boxes
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_the_head_is_one_set_cut_to_the_backbones_widths():
    # the MnasNet space chooses a block's filters: C4 and C5 change width, the head's inputs follow
    space = mnasnet_space(num_classes=2, resolution=64)
    net = SSDLiteSupernet(space)
    small, large = net.child_spec(space.smallest().spec), net.child_spec(space.largest().spec)
    child = net.extract(small)
    assert child.channels[:2] != net.extract(large).channels[:2]
    c5 = child.channels[1]
    shared = net.extras[0].conv_reduce.conv.weight
    assert c5 < shared.shape[1]
    assert torch.equal(child.extras[0].conv_reduce.conv.weight, shared[:, :c5])
    c4 = child.channels[0]
    assert torch.equal(child.class_net.predict[0].weight, net.class_net.predict[0].weight[:, :c4])
    assert torch.equal(child.box_net.conv_dw[0].bn.running_var, net.box_net.conv_dw[0].bn.running_var[:c4])
    assert torch.equal(child.extras[1].conv_pw.conv.weight, net.extras[1].conv_pw.conv.weight)  # fixed widths


def test_only_the_chosen_op_family_and_the_head_learn():
    space = mobiledet_space(num_classes=2, resolution=64)
    net = SSDLiteSupernet(space)
    params = dict(space.largest().params)
    params.update({"s2.r0.kind": "er", "s3.r0.kind": "tucker"})
    member = space.member(params).spec
    net.train()
    cls, box = net(torch.randn(2, 3, 64, 64), child=member)
    sum(o.square().mean() for o in [*cls, *box]).backward()
    grads = {k: p.grad is not None and p.grad.abs().sum() > 0 for k, p in net.named_parameters()}
    assert grads["backbone.op_weights.er.s2b0.conv_exp.weight"]
    assert not grads["backbone.blocks.2.0.conv_pw.weight"]  # stage 2's IBN did not run
    assert grads["backbone.op_weights.tucker.s3b0.conv_core.weight"]
    assert not grads["backbone.op_weights.er.s3b0.conv_exp.weight"]
    assert grads["extras.3.conv_pw.conv.weight"] and grads["class_net.predict.5.weight"]
    assert not any(k.startswith(("backbone.conv_head", "backbone.classifier")) for k in grads)  # no classifier head


def test_every_op_of_a_layer_runs_in_the_op_warm_up():
    space = mobiledet_space(num_classes=2, resolution=64)
    net = SSDLiteSupernet(space)
    base = dict(space.largest().params)
    variants = {kind: space.member({**base, "s2.r0.kind": kind}).spec for kind in ("ir", "er", "tucker")}
    net.train()
    cls, box = net(torch.randn(2, 3, 64, 64), child=variants["ir"], all_ops={(2, 0): variants})
    sum(o.square().mean() for o in [*cls, *box]).backward()
    for name in ("backbone.blocks.2.0.conv_pw.weight", "backbone.op_weights.er.s2b0.conv_exp.weight",
                 "backbone.op_weights.tucker.s2b0.conv_core.weight"):
        assert net.get_parameter(name).grad.abs().sum() > 0, name
    # the cached child (one op at that block) is untouched by the warm-up's module
    assert not isinstance(net._module(net.child_spec(variants["ir"])).backbone.blocks[2][0], MeanOfOps)


def test_what_a_detection_supernet_cannot_hold_is_refused_by_name():
    space = mobiledet_space(num_classes=2, resolution=64)
    net = SSDLiteSupernet(space)
    other = dataclasses.replace(net.child_spec(space.smallest().spec), extra_depths=(64, 64, 64, 64))
    with pytest.raises(SearchError, match="extra_depths differ from the supernet's"):
        net.extract(other)
    sized = SearchSpace("sized", space.base, (*space.choices, Choice("resolution", (48, 64))))
    with pytest.raises(SearchError, match="one resolution"):
        SSDLiteSupernet(sized)
