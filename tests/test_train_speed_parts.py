"""The fast pieces of the training step compute what the slow, obvious forms compute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from effml.train.ema import create_ema
from effml.train.engine import TrainingDiverged, train_step
from effml.train.objective import Batch, CrossEntropyObjective
from effml.train.optim import RMSpropTF


def _reference_rmsprop_tf(params: list[torch.Tensor], grads: list[torch.Tensor], state: dict,
                          lr: float, decay: float, momentum: float, eps: float, wd: float) -> None:
    """TF RMSProp written out per tensor, in float64: ms starts at 1, eps inside the sqrt,
    lr inside the momentum, L2 decay added to the gradient."""
    for i, (p, g) in enumerate(zip(params, grads)):
        g = g + wd * p
        ms = state.setdefault(("ms", i), torch.ones_like(p))
        mom = state.setdefault(("mom", i), torch.zeros_like(p))
        ms = decay * ms + (1 - decay) * g * g
        mom = momentum * mom + lr * g / torch.sqrt(ms + eps)
        state[("ms", i)], state[("mom", i)] = ms, mom
        p -= mom


def test_rmsprop_tf_matches_the_per_tensor_tf_formula_over_several_steps() -> None:
    gen = torch.Generator().manual_seed(0)
    # sizes span the CPU chunk boundary: many small tensors, one of 200k elements, odd shapes
    shapes = [(200_000,), (3,), (64, 32, 3, 3), (1,), (40_000,), (7, 5), (30_000,), (16,)]
    weights = [nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    norms = [nn.Parameter(torch.randn(s, generator=gen)) for s in [(32,), (5,)]]
    frozen = nn.Parameter(torch.randn(4, generator=gen))  # has no gradient: must not move
    hyper = dict(decay=0.9, momentum=0.9, eps=1e-3)
    opt = RMSpropTF([{"params": weights + [frozen], "weight_decay": 1e-2},
                     {"params": norms, "weight_decay": 0.0}], lr=0.05, **hyper)
    ref_w = [p.detach().double().clone() for p in weights]
    ref_n = [p.detach().double().clone() for p in norms]
    state_w: dict = {}
    state_n: dict = {}
    frozen_before = frozen.detach().clone()
    for step in range(6):
        lr = 0.05 * 0.7 ** step  # the learning rate changes between steps, as a schedule does
        for group in opt.param_groups:
            group["lr"] = lr
        grads_w = [torch.randn(s, generator=gen) * 3 for s in shapes]
        grads_n = [torch.randn(p.shape, generator=gen) for p in norms]
        for p, g in zip(weights + norms, grads_w + grads_n):
            p.grad = g.clone()
        opt.step()
        _reference_rmsprop_tf(ref_w, [g.double() for g in grads_w], state_w, lr=lr, wd=1e-2, **hyper)
        _reference_rmsprop_tf(ref_n, [g.double() for g in grads_n], state_n, lr=lr, wd=0.0, **hyper)
        for got, want in zip(weights + norms, ref_w + ref_n):
            torch.testing.assert_close(got.detach().double(), want, rtol=0, atol=1e-6)
    assert torch.equal(frozen.detach(), frozen_before)
    assert frozen not in opt.state
    for i, p in enumerate(weights):  # the state a checkpoint holds keeps its names and meaning
        # the mean square reaches ~100 here, so float32 rounding needs a relative tolerance
        torch.testing.assert_close(opt.state[p]["square_avg"].double(), state_w[("ms", i)],
                                   rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"].double(), state_w[("mom", i)],
                                   rtol=1e-6, atol=1e-6)


def _set_weights(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for t in list(model.parameters()) + [model[1].running_mean, model[1].running_var]:
            t.fill_(value)
        model[1].num_batches_tracked.fill_(int(value * 10))


def test_ema_warms_up_its_decay_as_tf_does() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    decay = 0.5  # small, so the warm-up hands over to it within the test
    values = [1.0, 3.0, -2.0, 0.5, 4.0, 4.0, -1.0, 2.0, 0.0, 6.0, 1.5, -3.0, 2.5]
    _set_weights(model, values[0])
    ema = create_ema(model, decay)
    # by hand: the first update copies the model; the n-th average (n = 1, 2, ...) uses
    # min(0.5, (1 + n) / (10 + n)), which reaches 0.5 at n = 8
    decays = [None, 2 / 11, 3 / 12, 4 / 13, 5 / 14, 6 / 15, 7 / 16, 8 / 17, 0.5, 0.5, 0.5, 0.5, 0.5]
    expected = 0.0
    for v, d in zip(values, decays):
        _set_weights(model, v)
        ema.update_parameters(model)
        expected = v if d is None else d * expected + (1 - d) * v
        for t in list(ema.module.parameters()) + [ema.module[1].running_mean, ema.module[1].running_var]:
            torch.testing.assert_close(t, torch.full_like(t, expected), rtol=0, atol=1e-6)
        assert int(ema.module[1].num_batches_tracked) == int(v * 10)  # integers follow the model
    assert expected == pytest.approx(1.1094553, abs=1e-6)


def test_train_step_stops_before_backward_when_the_loss_is_not_finite() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    opt = RMSpropTF(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    images = torch.full((2, 3, 2, 2), float("nan"))
    with pytest.raises(TrainingDiverged, match="the loss became nan"):
        train_step(model, model, Batch(images, torch.tensor([0, 1]), torch.arange(2)),
                   CrossEntropyObjective(0.1), opt, sched, None, None)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
