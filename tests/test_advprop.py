"""AdvProp: auxiliary BNs (routing, conversion, stripping), the PGD attacker, and the objective."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import effml
from effml.errors import EffmlError
from effml.layers import BatchNormAct2d, DualBatchNormAct2d, convert_to_advprop, strip_aux_bn, use_aux_bn
from effml.spec import NetworkSpec, parse_arch
from effml.train.advprop import AdvPropObjective, PGDAttacker, evaluate_under_attack, paper_steps
from effml.train.objective import Batch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def tiny_spec(num_classes: int = 10, dropout: float = 0.2) -> NetworkSpec:
    stages = parse_arch([["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e2_c16_se0.25"]])
    return NetworkSpec(stages=stages, stem_channels=8, head_channels=32, num_classes=num_classes,
                       resolution=32, dropout=dropout)


def normalise(pixels: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    return (pixels - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def pixels_of(images: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    return images * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)


def random_batch(n: int = 8, size: int = 32, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, size, size, generator=g)
    return Batch(normalise(pixels), torch.randint(0, 10, (n,), generator=g), torch.arange(n))


def duals(model: torch.nn.Module) -> list[DualBatchNormAct2d]:
    return [m for m in model.modules() if isinstance(m, DualBatchNormAct2d)]


def advprop_steps(model: torch.nn.Module, objective: AdvPropObjective, steps: int, seed: int = 0) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i in range(steps):
        out = objective(model, random_batch(seed=seed + i))
        opt.zero_grad()
        out.loss.backward()
        opt.step()


def test_paper_attacker_schedule():
    # AdvProp, arXiv 1911.09665, section 5.1: n = eps + 1, except n = 1 at eps = 1
    assert [paper_steps(e) for e in (1, 2, 3, 4)] == [1, 3, 4, 5]
    a = PGDAttacker()
    assert (a.epsilon, a.step_size, a.steps, a.targeted) == (1.0, 1.0, 1, True)


def test_convert_keeps_main_keys_and_starts_aux_as_a_copy():
    torch.manual_seed(0)
    plain = effml.create_model(tiny_spec())
    plain.train()
    plain(random_batch().images)  # non-trivial running stats to copy
    keys = set(plain.state_dict())
    model = convert_to_advprop(copy.deepcopy(plain))
    n_bn = sum(isinstance(m, BatchNormAct2d) for m in plain.modules())
    assert len(duals(model)) == n_bn > 0
    state = model.state_dict()
    assert {k for k in state if ".aux_bn." not in k} == keys
    for m in duals(model):
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(m, name), getattr(m.aux_bn, name))
            assert getattr(m, name).data_ptr() != getattr(m.aux_bn, name).data_ptr()
    model.eval()
    x = random_batch(seed=1).images
    with use_aux_bn(model, True):
        routed_aux = model(x)
    assert torch.allclose(routed_aux, model(x), atol=1e-6)
    with pytest.raises(EffmlError, match="convert_to_advprop"):
        use_aux_bn(effml.create_model(tiny_spec()), True)


def test_use_aux_bn_sets_routing_and_restores_it_as_a_context():
    model = convert_to_advprop(effml.create_model(tiny_spec()))
    with use_aux_bn(model, True):
        assert all(m.route_aux for m in duals(model))
        with use_aux_bn(model, False):
            assert not any(m.route_aux for m in duals(model))
        assert all(m.route_aux for m in duals(model))
    assert not any(m.route_aux for m in duals(model))
    use_aux_bn(model, True)  # a plain call switches and stays switched
    assert all(m.route_aux for m in duals(model))


def test_aux_bn_sees_only_adversarial_batches_and_its_stats_diverge():
    torch.manual_seed(0)
    model = convert_to_advprop(effml.create_model(tiny_spec()))
    attacker = PGDAttacker(epsilon=4, step_size=1, steps=2)
    objective = AdvPropObjective(attacker, MEAN, STD)
    current: dict[str, torch.Tensor] = {}
    clean: dict[str, torch.Tensor] = {}
    seen: list[tuple[bool, bool, bool]] = []  # (routed to aux, input is the clean batch, train mode)
    model.register_forward_pre_hook(lambda _m, args: current.__setitem__("x", args[0]))
    stem = model.bn1
    assert isinstance(stem, DualBatchNormAct2d)
    stem.register_forward_hook(
        lambda m, _a, _o: seen.append((m.route_aux, torch.equal(current["x"], clean["x"]), m.training)))

    steps = 3
    for i in range(steps):
        batch = random_batch(seed=i)
        clean["x"] = batch.images
        before = len(seen)
        out = objective(model, batch)
        out.loss.backward()
        step_seen = seen[before:]
        # attacker.steps forwards for PGD plus one for the loss go through aux; one clean through main
        assert [s[0] for s in step_seen].count(True) == attacker.steps + 1
        assert [s[0] for s in step_seen].count(False) == 1
        assert all(s[2] for s in step_seen)  # the engine's train mode is kept
    assert all(not is_clean for aux, is_clean, _ in seen if aux), "aux BN saw a clean batch"
    assert all(is_clean for aux, is_clean, _ in seen if not aux), "main BN saw an adversarial batch"
    for m in duals(model):
        # one running-stat update per step each: the PGD iterates did not touch the aux stats
        assert int(m.num_batches_tracked) == steps
        assert int(m.aux_bn.num_batches_tracked) == steps
    assert not torch.allclose(stem.aux_bn.running_mean, stem.running_mean, atol=1e-5)
    assert not torch.allclose(stem.aux_bn.running_var, stem.running_var, atol=1e-5)
    # the routing is back on main after the step
    assert not any(m.route_aux for m in duals(model))


def test_strip_aux_bn_loads_strictly_into_a_plain_model_with_the_same_outputs():
    torch.manual_seed(0)
    spec = tiny_spec()
    model = convert_to_advprop(effml.create_model(spec))
    advprop_steps(model, AdvPropObjective(PGDAttacker(epsilon=4, steps=2), MEAN, STD), steps=3)
    model.eval()
    x = random_batch(seed=99).images
    with use_aux_bn(model, False):
        expected = model(x)
    with use_aux_bn(model, True):
        via_aux = model(x)
    assert not torch.allclose(expected, via_aux, atol=1e-4)  # the paths differ, so the check below can fail

    state = strip_aux_bn(model.state_dict())
    assert not any("aux_bn" in k for k in state)
    plain = effml.create_model(spec)
    with pytest.raises(RuntimeError):
        plain.load_state_dict(model.state_dict(), strict=True)
    plain.load_state_dict(state, strict=True)
    plain.eval()
    assert torch.allclose(plain(x), expected, atol=1e-6)

    stripped = strip_aux_bn(copy.deepcopy(model))
    assert not duals(stripped)
    assert all(type(m) is not DualBatchNormAct2d for m in stripped.modules())
    assert set(stripped.state_dict()) == set(plain.state_dict())
    assert torch.allclose(stripped(x), expected, atol=1e-6)

    # evaluation of the dual model, even left routed to aux, uses the main BNs
    attacker = PGDAttacker(epsilon=4, steps=2, targeted=False)
    batches = [(x, torch.arange(len(x)) % 10)]
    use_aux_bn(model, True)
    torch.manual_seed(5)
    on_dual = evaluate_under_attack(model, batches, attacker, MEAN, STD)
    torch.manual_seed(5)
    assert on_dual == evaluate_under_attack(plain, batches, attacker, MEAN, STD)
    assert all(m.route_aux for m in duals(model))


@pytest.mark.parametrize("epsilon, steps", [(1, None), (4, 5), (16, 3)])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_the_pixel_epsilon_ball_and_the_valid_range(epsilon, steps, random_start):
    torch.manual_seed(0)
    model = effml.create_model(tiny_spec())
    model.train()
    pixels = torch.rand(6, 3, 32, 32)
    pixels[:, :, :4] = 0.0  # saturated pixels: the ball must be cut at the range
    pixels[:, :, -4:] = 1.0
    targets = torch.randint(0, 10, (6,))
    attacker = PGDAttacker(epsilon=epsilon, step_size=1.0, steps=steps, random_start=random_start)
    adv = pixels_of(attacker(model, normalise(pixels), targets, MEAN, STD))
    delta = adv - pixels
    eps = epsilon / 255
    assert delta.abs().max() <= eps + 1e-5
    assert adv.min() >= -1e-5 and adv.max() <= 1 + 1e-5
    # the attack actually moves (signed steps of 1/255 pixel units)
    assert delta.abs().amax(dim=(1, 2, 3)).min() >= min(eps, 1 / 255) - 1e-5
    assert (delta[:, :, :4] >= -1e-5).all() and (delta[:, :, -4:] <= 1e-5).all()


@pytest.fixture(scope="module")
def trained_model():
    """A tiny model trained to ~100% on an easy synthetic 4-class task (class templates + noise)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    classes, n, size = 4, 1200, 16
    templates = F.interpolate(torch.rand(classes, 3, 4, 4, generator=g), size=size, mode="bilinear",
                              align_corners=False)
    y = torch.randint(0, classes, (n,), generator=g)
    pixels = (0.5 + 0.3 * (templates[y] - 0.5) + 0.15 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    x = normalise(pixels)
    model = effml.create_model(tiny_spec(num_classes=classes, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for _ in range(4):
        order = torch.randperm(1000, generator=g)
        for i in range(0, 1000, 50):
            idx = order[i:i + 50]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model, x[1000:], y[1000:]


@pytest.mark.parametrize("targeted, at_most", [(False, 25.0), (True, 50.0)])
def test_pgd_lowers_the_accuracy_of_a_trained_model(trained_model, targeted, at_most):
    model, x, y = trained_model
    torch.manual_seed(0)
    attacker = PGDAttacker(epsilon=8, step_size=2, steps=10, targeted=targeted)
    result = evaluate_under_attack(model, [Batch(x, y, torch.arange(len(y)))], attacker, MEAN, STD)
    assert result["clean_top1"] >= 95.0
    assert result["adv_top1"] <= at_most
    # random signs of the same size barely hurt: it is the gradient that finds the weak direction
    noise = (8 / 255) * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).sign()
    noisy = normalise((pixels_of(x) + noise).clamp(0, 1))
    model.eval()
    with torch.no_grad():
        noisy_top1 = 100.0 * float((model(noisy).argmax(1) == y).float().mean())
    assert noisy_top1 >= 90.0


@pytest.mark.parametrize("eval_mode", [False, True])
def test_attack_leaves_grads_buffers_and_modes_untouched(eval_mode):
    torch.manual_seed(0)
    model = convert_to_advprop(effml.create_model(tiny_spec()))
    model.train()
    model.blocks[0].eval()  # a submodule the user froze stays frozen
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad = None if i % 2 else torch.full_like(p, 0.5)
    buffers = [b.clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    batch = random_batch()
    with use_aux_bn(model, True):
        adv = PGDAttacker(epsilon=4, steps=3, eval_mode=eval_mode)(model, batch.images, batch.targets, MEAN, STD)
    assert not torch.equal(adv, batch.images)
    assert not adv.requires_grad
    for i, p in enumerate(params):
        if i % 2:
            assert p.grad is None
        else:
            assert torch.equal(p.grad, torch.full_like(p, 0.5))
    assert all(torch.equal(b, before) for b, before in zip(model.buffers(), buffers))
    assert [m.training for m in model.modules()] == modes


def test_objective_loss_is_clean_plus_adversarial_cross_entropy():
    torch.manual_seed(0)
    model = convert_to_advprop(effml.create_model(tiny_spec()))
    with torch.no_grad():  # make the aux path differ, so that a wrong routing changes the loss
        for m in duals(model):
            m.aux_bn.weight.mul_(1.5)
            m.aux_bn.bias.add_(0.3)
    model.train()
    twin = copy.deepcopy(model)
    attacker = PGDAttacker(epsilon=3)  # paper: 4 steps
    batch = random_batch()
    torch.manual_seed(123)
    out = AdvPropObjective(attacker, MEAN, STD, label_smoothing=0.1)(model, batch)

    torch.manual_seed(123)  # same RNG stream: same random start, target labels and dropout masks
    for m in duals(twin):
        m.route_aux = True
    adv = attacker(twin, batch.images, batch.targets, MEAN, STD)
    for m in duals(twin):
        m.route_aux = False
    clean_logits = twin(batch.images)
    for m in duals(twin):
        m.route_aux = True
    adv_logits = twin(adv)
    clean = F.cross_entropy(clean_logits, batch.targets, label_smoothing=0.1)
    adv_ce = F.cross_entropy(adv_logits, batch.targets, label_smoothing=0.1)

    assert torch.allclose(out.logits, clean_logits, atol=1e-6)
    assert torch.allclose(out.parts["clean"], clean, atol=1e-6)
    assert torch.allclose(out.parts["adv"], adv_ce, atol=1e-6)
    assert torch.allclose(out.loss, clean + adv_ce, atol=1e-6)
    assert not out.parts["clean"].requires_grad and out.loss.requires_grad
