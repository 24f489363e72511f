"""AutoHAS (arXiv 2006.03656): the joint space's bases, the temporary-weight step (the real weights,
optimizer states and BN buffers stay bit-identical, and the temporary weights are what a real step
would give), the controller's learning, and ``effml autohas`` end to end with resume and retraining."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _effml_cli import effml
from safetensors.torch import load_file

from effml.errors import EffmlError, SearchError
from effml.search.oneshot.autohas import (
    AutoHASSection,
    AutoHASStep,
    build_supernet,
    joint_space,
    load_autohas_config,
    run_autohas,
)
from effml.search.spaces.catalog import autohas_space
from effml.search.spaces.joint import JointSpace, hyper_basis
from effml.search.spaces.search_space import HyperChoice
from effml.search.study.policy import FactorizedPolicy
from effml.train.objective import Batch, classification_loss
from effml.train.optim import build_optimizer
from effml.train.step import temporary_weights
from effml.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "autohas_fashion_mnist.yaml"
# the embedded digits at 16 px: a few seconds per run
SMALL = ["data.dataset=digits", "data.limit_train=null", "data.image_size=16", "data.batch_size=16",
         "data.holdout=0.2", "autohas.reward_images=32", "autohas.warmup_epochs=0", "train.bn_recalibrate=1"]


# -- the joint space ---------------------------------------------------------------------------

def test_continuous_hyper_parameters_become_bases_and_mix_back():
    lr = hyper_basis(HyperChoice("optim.lr", "float", low=1e-3, high=1e-1, log=True), 3)
    assert lr.values == pytest.approx((1e-3, 1e-2, 1e-1)) and lr.continuous and lr.log
    assert lr.mixture([0.5, 0.0, 0.5]) == pytest.approx(1e-2)  # geometric: halfway on the log scale
    assert lr.mixture([0, 1, 0]) == pytest.approx(1e-2)
    smoothing = hyper_basis(HyperChoice("train.label_smoothing", "float", low=0.0, high=0.2), 5)
    assert smoothing.values == pytest.approx((0, 0.05, 0.1, 0.15, 0.2))
    assert smoothing.mixture([0.5, 0, 0, 0, 0.5]) == pytest.approx(0.1)
    opt = hyper_basis(HyperChoice("optim.name", "categorical", ("sgd", "adamw")), 5)
    assert opt.values == ("sgd", "adamw") and opt.mixture([0.3, 0.7]) == "adamw"


def test_joint_space_decodes_indices_into_a_member_and_values():
    space = JointSpace.from_space(autohas_space(10, 32), bases=5)
    sizes = space.decisions()
    assert sizes["optim.name"] == 2 and sizes["optim.lr"] == 5 and sizes["s1.r0.kernel_size"] == 2
    assert not space.arch.hyper  # the supernet's part has no hyper-parameters
    spec, hyper = space.decode({name: n - 1 for name, n in sizes.items()})
    assert spec.stages[1][0].kernel_size == (5,) and spec.stages[1][0].expand_ratio == 6.0
    assert hyper["optim.name"] == "adamw" and hyper["optim.lr"] == pytest.approx(0.1)
    probs = {name: np.eye(n)[0] for name, n in sizes.items()}
    chosen, values, _ = space.final(probs)
    assert chosen == space.arch.smallest().spec and values["optim.lr"] == pytest.approx(3e-3)


def test_unsupported_hyper_parameters_are_named():
    with pytest.raises(SearchError, match="data.batch_size"):
        hyper_basis(HyperChoice("data.batch_size", "categorical", (16, 32)), 5)
    with pytest.raises(SearchError, match="integer"):
        hyper_basis(HyperChoice("optim.lr", "int", low=1, high=3), 5)
    with pytest.raises(SearchError, match="optim.name.*momentum"):
        hyper_basis(HyperChoice("optim.name", "categorical", ("sgd", "momentum")), 5)
    with pytest.raises(SearchError, match="no hyper-parameters"):
        JointSpace.from_space(autohas_space().__class__("a", autohas_space().base), 5)


# -- the controller ----------------------------------------------------------------------------

def test_default_controller_concentrates_on_the_better_option_within_a_search():
    """With the default settings and 250 noisy rewards (a 3-epoch search on Fashion-MNIST makes
    252 updates) the policy moves most of its mass to the option that is 5 points better."""
    s = AutoHASSection()
    policy, rng = FactorizedPolicy(), np.random.default_rng(0)
    entropies = []
    for _ in range(250):
        p = policy.probs("lr", 5)
        i = int(rng.choice(5, p=p))
        reward = 0.6 + (0.05 if i == 3 else 0.0) + rng.normal(0, 0.03)
        policy.update({"lr": (i, 5)}, reward, lr=s.controller_lr, decay=s.baseline_decay,
                      entropy_weight=s.entropy_weight)
        entropies.append(policy.entropy("lr"))
    assert policy.probs("lr").argmax() == 3 and policy.probs("lr")[3] > 0.6
    assert np.mean(entropies[-20:]) < 0.7 * math.log(5)


# -- the temporary-weight step -----------------------------------------------------------------

def _trainer(tmp_path: Path, *extra: str) -> tuple[Trainer, AutoHASStep]:
    cfg = load_autohas_config(CONFIG, [*SMALL, f"run.dir={tmp_path}", "train.threads=1", *extra])
    space = joint_space(cfg, 10)
    torch.manual_seed(0)
    step = AutoHASStep(space, cfg.autohas, 0)
    return Trainer(cfg, model=build_supernet(cfg, space), step=step), step


def _snapshot(trainer: Trainer, step: AutoHASStep) -> dict:
    return copy.deepcopy({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                          "others": {k: o.state_dict() for k, o in step._optimizers.items()},
                          "scheduler": trainer.scheduler.state_dict()})


def _assert_identical(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_temporary_weights_are_one_real_step_and_leave_everything_bit_identical(tmp_path, optimizer):
    trainer, step = _trainer(tmp_path, "optim.name=" + optimizer)
    for _ in range(3):  # momentum / Adam moments and BN statistics that a careless copy would share
        trainer.step()
    before = _snapshot(trainer, step)
    supernet = trainer.model
    spec = supernet.child_spec(supernet.space.smallest().spec)
    gen = torch.Generator().manual_seed(1)
    batch = Batch(torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen),
                  torch.arange(8))

    def loss(model, b):
        return classification_loss(model(b.images, child=spec), b.targets, 0.1)

    weights = temporary_weights(trainer, batch, lr=0.02, weight_decay=[3e-4, 0.0], loss=loss)
    _assert_identical(_snapshot(trainer, step), before)
    # the same step taken for real on copies gives the same tensors
    model = copy.deepcopy(trainer.model)
    opt = build_optimizer(model, dataclasses.replace(trainer.cfg.optim, name=optimizer))
    # (load_state_dict keeps the given tensors: without the deep copy, this step would move the real state)
    opt.load_state_dict(copy.deepcopy(trainer.optimizer.state_dict()))
    for i, g in enumerate(opt.param_groups):
        g["lr"], g["weight_decay"] = 0.02, (3e-4 if i == 0 else 0.0)
    loss(model, batch).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.cfg.optim.grad_clip)
    opt.step()
    changed = 0
    for name, t in model.state_dict().items():
        torch.testing.assert_close(weights[name], t, rtol=1e-5, atol=1e-6, msg=name)
        changed += not torch.equal(t, before["model"][name])
    assert changed > 10  # the step moved the weights and the child's BN statistics
    # and a whole controller step (temporary weights, reward, policy update) leaves them too
    rng = np.random.default_rng(0)
    parts = step._controller_step(trainer, supernet, batch, 1.0, rng)
    assert 0 <= parts["reward"].item() <= 1
    _assert_identical(_snapshot(trainer, step), before)


def test_the_search_refuses_a_config_it_cannot_run(tmp_path):
    with pytest.raises(EffmlError, match="data.holdout"):
        run_autohas(load_autohas_config(CONFIG, [*SMALL, "data.holdout=0", f"run.dir={tmp_path / 'r'}"]))
    with pytest.raises(EffmlError, match="data.mixup"):
        run_autohas(load_autohas_config(CONFIG, [*SMALL, "data.mixup=0.2", f"run.dir={tmp_path / 'r'}"]))
    with pytest.raises(EffmlError, match="contoller_lr"):
        load_autohas_config(CONFIG, ["autohas.contoller_lr=1"])
    assert not (tmp_path / "r").exists()


def test_differentiable_variant_learns_lr_and_weight_decay_by_the_hypergradient(tmp_path):
    trainer, step = _trainer(tmp_path, "autohas.variant=differentiable")
    for _ in range(3):
        trainer.step()
    # the gradient reaches both; one step of weight decay moves the held-out loss very little
    assert not np.allclose(step.policy.probs("optim.lr"), 0.2, atol=1e-3)
    assert not np.array_equal(step.policy.probs("optim.weight_decay"), np.full(5, 0.2))
    # the sampled values of lr are the mixture, not a basis
    lrs = {h["sample"]["optim.lr"] for h in step.history}
    assert not lrs & set(step.space.options("optim.lr"))


# -- effml autohas end to end ------------------------------------------------------------------

def test_cli_search_writes_a_config_that_trains_and_resumes_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    out = effml("autohas", str(CONFIG), *SMALL, f"run.dir={straight}", "train.max_steps=8", "train.log_interval=4")
    progress = out.stdout + out.stderr
    assert "reward 0." in progress and "entropy " in progress  # the controller's progress
    assert "chosen hyper-parameters: optim.name=" in out.stdout and "effml train" in out.stdout
    effml("autohas", str(CONFIG), *SMALL, f"run.dir={resumed}", "train.max_steps=4", "--quiet")
    effml("autohas", "--resume", str(resumed), "train.max_steps=8", "--quiet")
    a, b = (json.loads((d / "autohas.json").read_text()) for d in (straight, resumed))
    assert a["history"] == b["history"] and len(a["history"]) == 8
    assert a["distributions"] == b["distributions"] and a["chosen"] == b["chosen"]
    wa, wb = load_file(straight / "weights.safetensors"), load_file(resumed / "weights.safetensors")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert {h["sample"]["optim.name"] for h in a["history"]} == {"sgd", "adamw"}  # both optimizers' states resumed
    assert (straight / "autohas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "never updated" not in out.stderr
    # a run shorter than the controller's warm-up says its choice is the starting policy
    out = effml("autohas", str(CONFIG), *SMALL, f"run.dir={tmp_path / 'short'}", "train.max_steps=2",
                "autohas.warmup_epochs=100")
    assert "0 controller updates" in out.stdout and "the controller was never updated" in out.stderr
    # the chosen member trains from scratch with plain `effml train`
    chosen = (straight / "chosen.yaml").read_text()
    assert "chosen_model.json" in chosen and "holdout: 0.0" in chosen
    effml("train", str(straight / "chosen.yaml"), "train.max_steps=2", f"run.dir={tmp_path / 'retrain'}", "--quiet")
    run = json.loads((tmp_path / "retrain" / "run.json").read_text())
    assert run["model"].endswith("chosen_model.json")
    cfg = (tmp_path / "retrain" / "config.yaml").read_text()
    assert f"lr: {a['chosen']['hyper']['optim.lr']}" in cfg
