"""BigNAS supernet: every elastic dimension slices to the network built directly from the child's
spec, the sandwich step sums the children's gradients, BN calibration touches only BN statistics,
and the elastic-space checks name what is wrong."""

from __future__ import annotations

import pytest
import torch

from effml.errors import SearchError
from effml.models.network import EfficientNet
from effml.search.oneshot.sandwich import SandwichStep
from effml.search.oneshot.supernet import (
    Supernet, check_shareable, resize_to, slice_weight, storage_spec, zero_init_last_bn,
)
from effml.search.spaces.catalog import bignas_space
from effml.search.spaces.search_space import Choice, SearchSpace
from effml.spec import BlockSpec, NetworkSpec
from effml.train.bn_calibration import recalibrate_bn
from effml.train.config import load_config
from effml.train.optim import lr_factor
from effml.train.trainer import Trainer, preserved_global_state


def tiny_space(num_classes: int = 5) -> SearchSpace:
    rows = ((BlockSpec("ds", 12, kernel_size=3),),
            (BlockSpec("ir", 24, repeats=2, kernel_size=5, stride=2, expand_ratio=6.0, se_ratio=0.25),),
            (BlockSpec("ir", 32, repeats=2, kernel_size=5, stride=2, expand_ratio=6.0, se_ratio=0.25),))
    base = NetworkSpec(rows, stem_channels=16, head_channels=64, num_classes=num_classes, resolution=32,
                       dropout=0.0)
    choices = (Choice("out_channels", (8, 12), 0, 0),
               Choice("out_channels", (16, 24), 1, 0), Choice("repeats", (-1, 0), 1, 0),
               Choice("kernel_size", (3, 5), 1, 0), Choice("expand_ratio", (4.0, 6.0), 1, 0),
               Choice("out_channels", (24, 32), 2, 0), Choice("repeats", (-1, 0), 2, 0),
               Choice("kernel_size", (3, 5), 2, 0), Choice("expand_ratio", (3.0, 6.0), 2, 0),
               Choice("se_ratio", (0.0, 0.25), 2, 0),
               Choice("resolution", (24, 32)), Choice("stem_channels", (8, 16)), Choice("head_channels", (48, 64)))
    return SearchSpace("tiny_elastic", base, choices)


def _largest_params(space: SearchSpace) -> dict:
    return dict(space.largest().params)


def _copy_by_hand(super_state: dict[str, torch.Tensor], child: torch.nn.Module) -> None:
    """The BigNAS slicing rule written out independently of ``slice_weight``: leading channels, centre
    of each kernel."""
    state = {}
    for key, t in child.state_dict().items():
        src = super_state[key]
        index = []
        for axis, (want, have) in enumerate(zip(t.shape, src.shape)):
            if src.dim() == 4 and axis >= 2:
                pad = (have - want) // 2
                index.append(slice(pad, have - pad))
            else:
                index.append(slice(0, want))
        state[key] = src[tuple(index)].clone()
    child.load_state_dict(state, strict=True)


def _randomize_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)


@pytest.mark.parametrize("decision,option", [
    ("s0.r0.out_channels", 8), ("s1.r0.out_channels", 16), ("stem_channels", 8), ("head_channels", 48),
    ("s1.r0.repeats", -1), ("s2.r0.repeats", -1),
    ("s1.r0.kernel_size", 3), ("s2.r0.kernel_size", 3),
    ("s1.r0.expand_ratio", 4.0), ("s2.r0.expand_ratio", 3.0),
    ("s2.r0.se_ratio", 0.0), ("resolution", 24),
])
def test_each_elastic_dimension_equals_the_child_built_directly_with_copied_weights(decision, option):
    space = tiny_space()
    torch.manual_seed(0)
    net = Supernet(space)
    _randomize_bn(net)
    params = _largest_params(space)
    assert params[decision] != option
    params[decision] = option
    spec = net.child_spec(space.member(params).spec)
    child = EfficientNet(spec)
    _copy_by_hand(net.state_dict(), child)
    x = torch.randn(3, 3, spec.resolution, spec.resolution)
    for train in (False, True):  # running statistics (eval) and batch statistics (train)
        net.train(train)
        child.train(train)
        torch.testing.assert_close(net(x, child=spec), child(x), rtol=0, atol=1e-5)
    smaller = sum(p.numel() for p in child.parameters()) < sum(p.numel() for p in net.parameters())
    assert smaller == (decision != "resolution")


def test_an_elastic_kernel_is_the_centre_of_the_largest():
    w = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    assert torch.equal(slice_weight(w, (2, 1, 3, 3)), w[:, :, 1:4, 1:4])
    assert torch.equal(slice_weight(w, (1, 1, 5, 5)), w[:1])
    with pytest.raises(SearchError, match="blocks.0.0.conv_dw.weight"):
        slice_weight(w, (3, 1, 5, 5), "blocks.0.0.conv_dw.weight")


def test_a_shallower_stage_keeps_its_first_blocks_under_the_same_keys():
    space = tiny_space()
    net = Supernet(space)
    params = _largest_params(space)
    params["s2.r0.repeats"] = -1
    child = net.extract(space.member(params).spec)
    keys = set(child.state_dict())
    assert any(k.startswith("blocks.2.0.") for k in keys)
    assert not any(k.startswith("blocks.2.1.") for k in keys)
    assert keys <= set(net.state_dict())


def test_extract_loads_strictly_into_the_plain_network_and_gives_the_same_outputs():
    space = tiny_space()
    torch.manual_seed(0)
    net = Supernet(space).eval()
    _randomize_bn(net)
    spec = net.child_spec(space.smallest().spec)
    extracted = net.extract(spec)
    plain = EfficientNet(spec).eval()
    plain.load_state_dict(extracted.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x, child=spec), plain(resize_to(x, spec.resolution)), rtol=0, atol=1e-5)


def test_bn_calibration_of_a_child_changes_only_its_bn_statistics_and_loads_back():
    space = tiny_space()
    torch.manual_seed(0)
    net = Supernet(space).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    spec = net.child_spec(space.smallest().spec)
    child = net.extract(spec)
    params_before = {k: v.clone() for k, v in child.named_parameters()}
    batches = [torch.randn(8, 3, spec.resolution, spec.resolution) for _ in range(3)]
    recalibrate_bn(child, batches)
    for k, v in child.named_parameters():
        assert torch.equal(v, params_before[k]), k
    assert any(not torch.equal(b, net.child_weights(spec)[k]) for k, b in child.named_buffers()
               if "running" in k), "calibration changed no statistic"
    for k, v in net.state_dict().items():  # the supernet itself is untouched by calibrating a copy
        assert torch.equal(v, before[k]), k
    net.load_child_buffers(spec, child)
    x = torch.randn(2, 3, spec.resolution, spec.resolution)
    torch.testing.assert_close(net(x, child=spec), child(x), rtol=0, atol=1e-5)
    for k, v in net.named_parameters():
        assert torch.equal(v, before[k]), k


def test_zero_init_makes_every_residual_block_start_as_the_identity():
    space = tiny_space()
    net = Supernet(space).eval()
    assert zero_init_last_bn(net) == 2  # the second block of stages 1 and 2
    block = net.blocks[1][1]
    x = torch.randn(2, 24, 16, 16)
    torch.testing.assert_close(block(x), x)


def _trainer(tmp_path, space: SearchSpace) -> Trainer:
    cfg = load_config(None, ["data.dataset=digits", "data.image_size=32", "data.batch_size=8",
                             "data.augment=none", "optim.name=sgd", "optim.lr=1.0", "optim.momentum=0.0",
                             "optim.weight_decay=0.0", "train.ema_decay=null", "model.dropout=0.0",
                             "model.drop_path=0.0", "schedule.name=constant", "train.threads=1",
                             f"run.dir={tmp_path}"])
    torch.manual_seed(0)
    return Trainer(cfg, model=Supernet(tiny_space(10)))


def test_the_sandwich_step_applies_exactly_the_sum_of_the_childrens_gradients(tmp_path):
    with preserved_global_state():
        t = _trainer(tmp_path, tiny_space(10))
        net = t.model
        step = SandwichStep(num_random=2, label_smoothing=0.1, seed=3)
        specs = step.children(net, 0)
        assert specs[0] == net.spec and specs[1] == net.child_spec(net.space.smallest().spec)
        assert len(specs) == 4 and all(s.dropout == 0 for s in specs[1:])
        images, targets = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
        from effml.train.objective import Batch, classification_loss

        batch = Batch(images, targets, torch.arange(8))
        before = {k: v.detach().clone() for k, v in net.named_parameters()}
        net.train()
        logits = net(images, child=specs[0])
        teacher = logits.detach().softmax(1)
        losses = [classification_loss(logits, targets, 0.1)]
        losses += [classification_loss(net(images, child=s), teacher) for s in specs[1:]]
        names = [k for k, _ in net.named_parameters()]
        expected = {k: torch.zeros_like(v) for k, v in before.items()}
        for loss in losses:  # each child's gradient alone, then summed by hand
            grads = torch.autograd.grad(loss, list(net.parameters()), allow_unused=True)
            for k, g in zip(names, grads):
                if g is not None:
                    expected[k] += g
        with torch.no_grad():  # the passes above ran BN in train mode: undo nothing, BN stats don't matter
            for k, v in net.named_parameters():
                v.copy_(before[k])
        out = step(t, batch)
        assert torch.isclose(out.loss, torch.stack([x.detach() for x in losses]).sum(), atol=1e-5)
        moved = 0
        for k, v in net.named_parameters():
            torch.testing.assert_close(before[k] - v.detach(), expected[k], rtol=1e-4, atol=1e-6)
            moved += int(expected[k].abs().sum() > 0)
        assert moved > 0.9 * len(names)


def test_children_are_fixed_by_seed_and_step_and_the_ablation_draws_them_at_random():
    net = Supernet(tiny_space())
    a = SandwichStep(seed=1).children(net, 7)
    assert a == SandwichStep(seed=1).children(net, 7)
    assert a != SandwichStep(seed=1).children(net, 8)
    free = SandwichStep(seed=1, sandwich=False).children(net, 7)
    assert len(free) == 4 and free[0].drop_path == net.spec.drop_path
    assert free[1].dropout == 0


def test_exponential_schedule_with_a_constant_ending():
    cfg = load_config(None, ["schedule.name=exponential", "schedule.decay_rate=0.5", "schedule.decay_epochs=1",
                             "schedule.min_lr_factor=0.1"]).schedule
    assert [lr_factor(s, cfg, 1, 100) for s in range(6)] == [1.0, 0.5, 0.25, 0.125, 0.1, 0.1]


def test_the_bignas_space_is_elastic_and_spans_a_range_of_sizes():
    from effml.spec.plan import plan

    space = bignas_space(10, 32)
    check_shareable(space)
    assert storage_spec(space) == space.largest().spec  # the supernet is the largest child
    largest, smallest = plan(space.largest().spec).macs(), plan(space.smallest().spec).macs()
    assert largest > 5 * smallest
    assert space.largest().spec.resolution == 32 and space.smallest().spec.resolution == 24


def test_spaces_a_supernet_cannot_share_are_refused_by_name():
    space = tiny_space()
    with pytest.raises(SearchError, match=r"choice compound cannot share weights"):
        Supernet(SearchSpace("c", space.base, (Choice("compound", ((1.2, 1.1, 1.15), (1.0, 1.0, 1.0))),)))
    two_rows = space.base.replace(stages=(space.base.stages[0] + space.base.stages[0], *space.base.stages[1:]))
    with pytest.raises(SearchError, match="one block row per stage"):
        Supernet(SearchSpace("d", two_rows, (Choice("repeats", (0, 1), 0, 0),)))
    grouped = space.base.replace(stages=(*space.base.stages[:2], (BlockSpec(
        "ir", 32, kernel_size=(3, 5), stride=2, expand_ratio=6.0, exp_groups=2, proj_groups=2),)))
    with pytest.raises(SearchError, match=r"block s2.b0 has grouped 1x1 convs"):
        Supernet(SearchSpace("g", grouped, (Choice("expand_ratio", (3.0, 6.0), 2, 0),)))
    Supernet(SearchSpace("g", grouped, (Choice("kernel_size", ((3,), (3, 5)), 2, 0),)))  # widths fixed: fine
    net = Supernet(space)
    bigger = space.largest().spec.replace(head_channels=128)
    with pytest.raises(SearchError, match="conv_head.weight"):
        net(torch.randn(1, 3, 32, 32), child=net.child_spec(bigger))


def test_coarse_to_fine_keeps_every_candidate_within_the_target_and_returns_the_best_scored():
    from effml.search.oneshot.selection import coarse_to_fine, skeletons
    from effml.spec.plan import plan

    space = tiny_space()
    macs = [plan(space.member(p).spec).macs() for p in skeletons(space)]
    assert min(macs) == plan(space.smallest().spec).macs() and max(macs) == plan(space.largest().spec).macs()
    target = sorted(macs)[len(macs) // 2]
    # a score that prefers deep, high-resolution children: what the fine stage should find
    sel = coarse_to_fine(space, lambda s: s.resolution + 10 * s.num_blocks, target, coarse_top=3, mutations=8)
    assert all(c.macs <= target for c in sel.scored) and len(sel.scored) >= 3
    assert sel.best.score == max(c.score for c in sel.scored)
    coarse = [c for c in sel.scored if c.stage == "coarse"]
    assert [c.macs for c in coarse] == sorted((m for m in macs if m <= target), reverse=True)[:3]
    with pytest.raises(SearchError, match="the smallest has"):
        coarse_to_fine(space, lambda s: 0.0, min(macs) - 1)


def test_selection_by_latency_uses_the_tables_prediction():
    from effml.measure.latency_table import Settings, build_latency_table, predict
    from effml.search.oneshot.selection import coarse_to_fine

    space = SearchSpace("lat", tiny_space().base.replace(resolution=16),
                        tuple(c for c in tiny_space().choices if c.field != "resolution"))
    table = build_latency_table(list(space.layer_variants()), settings=Settings(warmup=0, rounds=2),
                                calibration_specs=[space.smallest().spec])
    lat = [predict(table, m.spec) for m in (space.smallest(), space.largest())]
    target = sum(lat) / 2
    sel = coarse_to_fine(space, lambda s: float(s.head_channels), target, cost=lambda s: predict(table, s),
                         unit="ms", coarse_top=2, mutations=4)
    assert sel.unit == "ms" and all(c.cost <= target for c in sel.scored)
    assert sel.best.cost == predict(table, sel.best.spec)
