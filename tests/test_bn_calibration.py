"""BN recalibration: the running statistics become the plain average over the given batches;
nothing else in the model changes; frozen BatchNorms keep theirs; training is not disturbed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from effml.train.bn_calibration import recalibrate_bn


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01), nn.ReLU(), nn.Dropout(0.5),
                         nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5))


def _batches(n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(6, 3, 8, 8, generator=g) * (i + 1) + i for i in range(n)]


def test_statistics_are_the_average_over_the_batches_and_nothing_else_changes() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = _batches()
    assert recalibrate_bn(net, batches) == 3
    assert not net.training and net[1].momentum == 0.01  # eval mode, momentum restored
    # the first BN's inputs are the conv's outputs: per batch mean / unbiased variance, averaged
    with torch.no_grad():
        outs = [net[0](b) for b in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(net[1].running_mean, mean)
    torch.testing.assert_close(net[1].running_var, var)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for k, v in net.state_dict().items():
        if k.endswith(stats):
            continue
        assert torch.equal(v, before[k]), f"{k} changed"
    assert not torch.equal(net[5].running_mean, before["5.running_mean"])


def test_it_runs_the_network_without_dropout() -> None:
    """Dropout off: the same batches give the same statistics every time."""
    a, b = _net(), _net()
    recalibrate_bn(a, _batches())
    torch.manual_seed(123)
    recalibrate_bn(b, _batches())
    assert torch.equal(a[5].running_var, b[5].running_var)


def test_frozen_batchnorms_keep_their_statistics() -> None:
    net = _net()
    kept = net[1].running_mean.clone()
    recalibrate_bn(net, _batches(), frozen=net[:2])
    assert torch.equal(net[1].running_mean, kept)
    assert not torch.equal(net[5].running_mean, torch.zeros(5))


def test_no_batches_leave_the_statistics_alone() -> None:
    net = _net()
    net[1].running_mean.fill_(0.5)
    assert recalibrate_bn(net, []) == 0
    assert torch.equal(net[1].running_mean, torch.full((4,), 0.5))


def test_trainer_recalibration_leaves_training_exactly_as_without_it() -> None:
    """Recalibrating before evaluations touches neither the weights nor the RNG stream: the
    next steps are bit-identical to a run that never recalibrated."""
    from effml.train.config import config_from_dict
    from effml.train.trainer import Trainer

    cfg = config_from_dict({"model": {"name": "efficientnet_b0"}, "data": {"image_size": 16, "batch_size": 8,
                            "limit_train": 64, "augment": "basic"},
                            "train": {"epochs": 1, "threads": 1, "ema_decay": 0.9}})
    runs = []
    for recal in (False, True):
        t = Trainer(cfg)
        t.step()
        if recal:
            assert t.recalibrate_bn(2) == 2
            assert t.net.training
        t.step()
        runs.append({k: v.clone() for k, v in t.model.state_dict().items()})
    for k, v in runs[0].items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, runs[1][k]), k
