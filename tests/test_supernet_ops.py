"""A supernet over op choices (TuNAS, arXiv 2008.06120; MobileDets, arXiv 2004.14525) and MixConv
kernel groups (MixNet, arXiv 1907.09595): every member of the MnasNet, MobileDet and MixNet-kernel
spaces runs on the shared weights exactly as the plain network built from its spec with those
weights copied in by an independent rule, each op family trains its own weights, and a MixConv
group is a channel range of one shared kernel."""

from __future__ import annotations

import random

import pytest
import torch

from effml.models.network import EfficientNet
from effml.search.oneshot.supernet import Supernet, block_kinds, storage_spec, zero_init_last_bn
from effml.search.spaces.catalog import mixnet_kernel_space, mnasnet_space, mobiledet_space
from effml.search.spaces.search_space import SearchSpace


def _by_hand(net: Supernet, spec) -> dict[str, torch.Tensor]:
    """The child's state written out without the supernet's lookup: the op family's block where the
    child's op is not the storage network's, a MixConv group's channel range, then leading channels
    and centred kernels."""
    shared = net.state_dict()
    primary = block_kinds(net.spec)
    child = EfficientNet(spec)
    kinds = block_kinds(spec)
    state = {}
    for key, t in child.state_dict().items():
        src_key = key
        parts = key.split(".")
        if parts[0] == "blocks":
            at = (int(parts[1]), int(parts[2]))
            if kinds[at] != primary[at]:
                src_key = f"op_weights.{kinds[at]}.s{at[0]}b{at[1]}." + ".".join(parts[3:])
        if src_key in shared:
            src = shared[src_key]
        else:  # MixConv group g of a depthwise conv: its channels in the shared kernel
            conv, g = src_key.rsplit(".", 2)[0], int(src_key.rsplit(".", 2)[1])
            splits = child.get_submodule(key.rsplit(".", 2)[0]).splits
            src = shared[conv + ".weight"][sum(splits[:g]):sum(splits[:g + 1])]
        index = []
        for axis, (want, have) in enumerate(zip(t.shape, src.shape)):
            pad = (have - want) // 2 if src.dim() == 4 and axis >= 2 else 0
            index.append(slice(pad, pad + want))
        state[key] = src[tuple(index)].clone()
    return state


def _randomize(net: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)


SPACES = {
    "mnasnet": lambda: mnasnet_space(10, 32),
    "mobiledet": lambda: mobiledet_space(10, 64),
    "mixnet_kernels": lambda: mixnet_kernel_space(10, 32),
}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_member_runs_on_the_shared_weights_as_its_plain_network(name):
    space = SPACES[name]()
    torch.manual_seed(0)
    net = Supernet(space)
    _randomize(net)
    rng = random.Random(0)
    members = [space.random_member(rng).spec for _ in range(4)] + [space.smallest().spec, space.largest().spec]
    for spec in members:
        spec = net.child_spec(spec)
        plain = EfficientNet(spec)
        plain.load_state_dict(_by_hand(net, spec), strict=True)
        extracted = net.extract(spec)
        x = torch.randn(2, 3, spec.resolution, spec.resolution)
        for train in (False, True):
            net.train(train)
            plain.train(train)
            extracted.train(train)
            out = net(x, child=spec)
            torch.testing.assert_close(out, plain(x), rtol=0, atol=1e-5)
            torch.testing.assert_close(out, extracted(x), rtol=0, atol=1e-5)


def test_each_op_family_has_its_own_weights_and_only_the_chosen_one_learns():
    space = mnasnet_space(10, 32)
    net = Supernet(space)
    assert set(net.op_weights) == {"er"}  # IBN is the storage network's op; fused IBN sits beside it
    params = dict(space.largest().params)
    params.update({"s2.r0.kind": "er", "s3.r0.kind": "ir"})
    spec = net.child_spec(space.member(params).spec)
    assert block_kinds(spec)[(2, 0)] == "er" and block_kinds(spec)[(3, 0)] == "ir"
    net.train()
    net(torch.randn(2, 3, 32, 32), child=spec).sum().backward()
    grads = {k: p.grad is not None and p.grad.abs().sum() > 0 for k, p in net.named_parameters()}
    assert grads["op_weights.er.s2b0.conv_exp.weight"]  # the fused IBN of stage 2 learns
    assert not grads["blocks.2.0.conv_dw.weight"]  # the IBN of stage 2 was not run
    assert grads["blocks.3.0.conv_dw.weight"] and not grads["op_weights.er.s3b0.conv_exp.weight"]


def test_separate_kernels_give_each_kernel_size_its_own_weights_as_tunas_does():
    # TuNAS (google-research tunas/rematlib/mobile_model_v3.py) builds one depthwise conv per kernel
    # size of a layer and shares the 1x1 convs: a 3x3 child is not the centre of the 5x5 weights
    space = mnasnet_space(10, 32)
    torch.manual_seed(0)
    net = Supernet(space, kernels="separate")
    _randomize(net)
    assert "ir_s3b0_k3_conv_dw_weight" in net.kernel_weights and "er_s3b0_k3_conv_exp_weight" in net.kernel_weights
    assert not any("_k5_" in k for k in net.kernel_weights)  # the storage network holds the largest
    params = dict(space.largest().params)
    params.update({"s3.r0.kernel_size": 3, "s3.r0.kind": "ir", "s2.r0.kernel_size": 5, "s2.r0.kind": "ir"})
    spec = net.child_spec(space.member(params).spec)
    x = torch.randn(2, 3, 32, 32)
    for train in (False, True):
        net.train(train)
        extracted = net.extract(spec).train(train)
        torch.testing.assert_close(net(x, child=spec), extracted(x), rtol=0, atol=1e-5)
    own = net.kernel_weights["ir_s3b0_k3_conv_dw_weight"]
    centre = net.blocks[3][0].conv_dw.weight[:, :, 1:4, 1:4]
    assert torch.equal(extracted.blocks[3][0].conv_dw.weight, own[:extracted.blocks[3][0].conv_dw.weight.shape[0]])
    assert not torch.equal(own, centre)
    net.zero_grad()
    net(x, child=spec).sum().backward()
    assert own.grad is not None and own.grad.abs().sum() > 0  # the 3x3 child trains its own kernel
    assert net.blocks[3][0].conv_dw.weight.grad is None  # and not the 5x5 one
    assert net.blocks[2][0].conv_dw.weight.grad.abs().sum() > 0  # a 5x5 child trains the storage kernel
    # the default (BigNAS's elastic kernel) holds no per-size weights
    assert len(Supernet(space).kernel_weights) == 0


def test_mixconv_groups_are_channel_ranges_of_one_shared_kernel():
    space = mixnet_kernel_space(10, 32)
    net = Supernet(space)
    assert all(len(b.kernel_size) == 1 for st in storage_spec(space).stages for b in st)
    first = next(c for c in space.choices)  # s1.r0.kernel_size
    params = dict(space.largest().params)
    params[first.name] = "3,5"
    spec = net.child_spec(space.member(params).spec)
    weights = net.child_weights(spec)
    shared = net.get_parameter(f"blocks.{first.stage}.0.conv_dw.weight")  # [C, 1, 9, 9]
    g0, g1 = weights[f"blocks.{first.stage}.0.conv_dw.0.weight"], weights[f"blocks.{first.stage}.0.conv_dw.1.weight"]
    assert g0.shape[-1] == 3 and g1.shape[-1] == 5
    assert torch.equal(g0, shared[:g0.shape[0], :, 3:6, 3:6])
    assert torch.equal(g1, shared[g0.shape[0]:g0.shape[0] + g1.shape[0], :, 2:7, 2:7])


def test_zero_init_starts_every_op_familys_residual_blocks_as_the_identity():
    space = mobiledet_space(10, 64)
    net = Supernet(space).eval()
    changed = zero_init_last_bn(net)
    residual = sum(getattr(m, "has_skip", False) for m in net.modules())
    assert changed == residual > 0
    assert any(getattr(m, "has_skip", False) for m in net.op_weights.modules())


def test_a_child_with_an_op_its_layer_does_not_offer_is_refused_by_name():
    space = mobiledet_space(10, 64, ops=("ir", "er"), name="ibn_fused")
    net = Supernet(space)
    spec = space.base
    stage = next(s for s, st in enumerate(spec.stages) if s > 0)
    rows = list(spec.stages[stage])
    import dataclasses

    rows[0] = dataclasses.replace(rows[0], kind="tucker", expand_ratio=1.0)
    bad = spec.replace(stages=(*spec.stages[:stage], tuple(rows), *spec.stages[stage + 1:]))
    with pytest.raises(Exception, match=r"'tucker' block, which space 'ibn_fused' does not offer"):
        net(torch.randn(1, 3, 64, 64), child=net.child_spec(bad))


def test_the_supernet_of_an_elastic_space_has_no_op_weights():
    from effml.search.spaces.catalog import bignas_space

    space: SearchSpace = bignas_space(10, 32)
    net = Supernet(space)
    assert len(net.op_weights) == 0 and net.spec == space.largest().spec


def test_bignas_refuses_a_space_whose_members_are_not_slices_of_its_largest():
    from effml.errors import SearchError
    from effml.search.oneshot.supernet import check_elastic
    from effml.search.spaces.catalog import bignas_space

    check_elastic(bignas_space(10, 32))
    for space in (mnasnet_space(10, 32), mixnet_kernel_space(10, 32)):
        with pytest.raises(SearchError, match="is not elastic: s.*picks operations"):
            check_elastic(space)
