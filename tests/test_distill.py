"""Knowledge distillation: the loss against the textbook formula, the frozen teacher, the logit
cache, and a student that learns to agree with its teacher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effml
from effml.errors import EffmlError
from effml.spec import NetworkSpec, parse_arch
from effml.train.distill import (
    DEFAULT_ALPHA, DEFAULT_TEMPERATURE, DistillationObjective, TeacherLogitCache, distillation_loss,
    kd_loss,
)
from effml.train.objective import Batch


def _tiny_spec(num_classes: int = 10, resolution: int = 16) -> NetworkSpec:
    return NetworkSpec(
        stages=parse_arch([["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e2_c16_se0.25"]]),
        stem_channels=8, head_channels=32, num_classes=num_classes, resolution=resolution, dropout=0.0,
    )


class _CountingTeacher(nn.Module):
    """A fixed linear classifier of the mean colour that counts the samples it has seen."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, num_classes)
        self.dropout = nn.Dropout(0.5)  # makes a train-mode forward visibly random
        self.samples_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples_seen += x.shape[0]
        return self.fc(self.dropout(self.pool(x).flatten(1)))


# ---------------------------------------------------------------- the loss


def test_kd_loss_matches_hand_computed_kl():
    # Two samples, two classes, T = 2: p = softmax(z / 2),
    # loss = T^2 * mean_i KL(p_teacher || p_student).
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    e, r = math.e, math.exp(0.5)
    pt1, ps1 = (1 / (1 + e), e / (1 + e)), (r / (1 + r), 1 / (1 + r))
    pt2, ps2 = (e / (1 + e), 1 / (1 + e)), (0.5, 0.5)
    kl1 = sum(p * math.log(p / q) for p, q in zip(pt1, ps1))  # 0.25740...
    kl2 = sum(p * math.log(p / q) for p, q in zip(pt2, ps2))  # 0.11094...
    expected = 2.0**2 * (kl1 + kl2) / 2  # batchmean: divided by the batch size, not by batch * classes
    assert expected == pytest.approx(0.736694, abs=1e-6)
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(expected, rel=1e-6)
    # KL is not symmetric: swapping student and teacher gives another number.
    assert kd_loss(teacher, student, 2.0).item() != pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_loss_is_zero_when_student_equals_teacher(temperature):
    logits = torch.randn(6, 7, generator=torch.Generator().manual_seed(0)) * 3
    assert kd_loss(logits, logits.clone(), temperature).item() == pytest.approx(0.0, abs=1e-6)
    shifted = kd_loss(logits + 5.0, logits, temperature).item()  # softmax is shift-invariant
    assert shifted == pytest.approx(0.0, abs=1e-5)
    assert kd_loss(logits * 0.5, logits, temperature).item() > 1e-3


def test_kd_loss_t_squared_keeps_the_scale_at_high_temperature():
    # For large T, KL(softmax(t/T) || softmax(s/T)) ~ Var_c(t - s) / (2 T^2), so only with the T^2
    # factor does the loss tend to half the per-sample variance of the logit difference over classes.
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 10, generator=gen), torch.randn(5, 10, generator=gen)
    limit = 0.5 * (teacher - student).var(dim=1, unbiased=False).mean().item()
    assert kd_loss(student, teacher, 200.0).item() == pytest.approx(limit, rel=0.01)
    assert kd_loss(student, teacher, 50.0).item() == pytest.approx(limit, rel=0.05)
    # and T^2 * KL exactly, at any T
    t = 3.0
    kl = F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="sum").item() / 5
    assert kd_loss(student, teacher, t).item() == pytest.approx(t * t * kl, rel=1e-5)


def test_kd_loss_detaches_the_teacher_and_rejects_bad_input():
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    kd_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(EffmlError, match="temperature"):
        kd_loss(student, teacher, 0.0)
    with pytest.raises(EffmlError, match="same number of classes"):
        kd_loss(student, torch.randn(3, 5), 1.0)


def test_distillation_loss_blends_kd_and_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 5, generator=gen), torch.randn(8, 5, generator=gen)
    y = torch.randint(0, 5, (8,), generator=gen)
    kd, ce = kd_loss(s, t, 4.0).item(), F.cross_entropy(s, y).item()
    assert kd != pytest.approx(ce, rel=1e-2)
    assert distillation_loss(s, t, y, 4.0, 1.0).item() == pytest.approx(kd, rel=1e-6)
    assert distillation_loss(s, t, y, 4.0, 0.0).item() == pytest.approx(ce, rel=1e-6)
    assert distillation_loss(s, t, y, 4.0, 0.3).item() == pytest.approx(0.3 * kd + 0.7 * ce, rel=1e-6)
    smoothed = F.cross_entropy(s, y, label_smoothing=0.1).item()
    got = distillation_loss(s, t, y, 4.0, 0.0, label_smoothing=0.1).item()
    assert got == pytest.approx(smoothed, rel=1e-6)
    soft = F.one_hot(y, 5).float() * 0.6 + 0.08  # mixup-style probability targets
    got = distillation_loss(s, t, soft, 4.0, 0.0).item()
    assert got == pytest.approx(F.cross_entropy(s, soft).item())
    with pytest.raises(EffmlError, match="alpha"):
        distillation_loss(s, t, y, 4.0, 1.5)
    assert (DEFAULT_TEMPERATURE, DEFAULT_ALPHA) == (4.0, 0.9)


# ---------------------------------------------------------------- the objective


def test_teacher_is_frozen_in_eval_mode_and_gets_no_gradient():
    torch.manual_seed(0)
    teacher = effml.create_model(_tiny_spec().replace(dropout=0.5))
    teacher.train()
    student = effml.create_model(_tiny_spec())
    objective = DistillationObjective(teacher, temperature=2.0, alpha=0.25)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    before = {k: v.clone() for k, v in teacher.state_dict().items()}

    x = torch.randn(4, 3, 16, 16)
    batch = Batch(x, torch.tensor([0, 1, 2, 3]), torch.arange(4))
    for _ in range(2):
        teacher.train()  # an engine calling .train() on everything must not change the teacher's mode
        out = objective(student.train(), batch)
        out.loss.backward()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    after = teacher.state_dict()  # BN running statistics included: no train-mode forward happened
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Deterministic teacher logits: dropout 0.5 would make two train-mode forwards differ.
    assert torch.equal(objective.teacher_logits(batch), objective.teacher_logits(batch))

    assert set(out.parts) == {"kd", "ce"} and all(not v.requires_grad for v in out.parts.values())
    kd, ce = out.parts["kd"].item(), out.parts["ce"].item()
    assert out.loss.item() == pytest.approx(0.25 * kd + 0.75 * ce, rel=1e-5)
    assert out.logits.shape == (4, 10)


def test_cache_calls_the_teacher_once_per_index():
    torch.manual_seed(0)
    teacher = _CountingTeacher()
    cache = TeacherLogitCache(10, 10)
    objective = DistillationObjective(teacher, cache=cache)
    student = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))
    images = torch.randn(10, 3, 4, 4)
    labels = torch.randint(0, 10, (10,))

    def batch(idx: list[int]) -> Batch:
        i = torch.tensor(idx)
        return Batch(images[i], labels[i], i)

    objective(student, batch([0, 1, 2, 3]))
    objective(student, batch([4, 5, 6, 7]))
    assert teacher.samples_seen == 8 and cache.num_filled == 8
    objective(student, batch([2, 3, 8, 9]))  # a partial hit: only 8 and 9 go through the teacher
    assert teacher.samples_seen == 10 and cache.num_filled == 10
    for idx in ([0, 1, 2, 3, 4], [9, 8, 7, 6, 5]):  # second epoch, another order: all from the cache
        got = objective.teacher_logits(batch(idx))
        with torch.no_grad():
            direct = teacher.eval()(images[torch.tensor(idx)])
        torch.testing.assert_close(got, direct)
    assert teacher.samples_seen == 10 + 10  # only the two direct calls above

    # Mixup batches (probability targets) are mixed images: they bypass the cache.
    soft = Batch(images[:2] * 0.5, F.one_hot(labels[:2], 10).float(), torch.tensor([0, 1]))
    saved = cache.logits.clone()
    objective(student, soft)
    assert teacher.samples_seen == 22 and torch.equal(cache.logits, saved)


def test_cache_save_load_round_trip_and_shape_mismatch(tmp_path):
    cache = TeacherLogitCache(6, 4)
    cache.store(torch.tensor([1, 4]), torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 0.0, 2.5]]))
    path = cache.save(tmp_path / "sub" / "teacher.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["teacher.safetensors"]  # no temp leftovers

    loaded = TeacherLogitCache.load(path, num_samples=6, num_classes=4)
    assert torch.equal(loaded.logits, cache.logits) and torch.equal(loaded.filled, cache.filled)
    assert loaded.filled.tolist() == [False, True, False, False, True, False]
    rows, hit = loaded.lookup(torch.tensor([4, 0]))
    assert hit.tolist() == [True, False] and rows[0].tolist() == [-1.0, 0.5, 0.0, 2.5]
    assert TeacherLogitCache.open(path, 6, 4).num_filled == 2
    assert TeacherLogitCache.open(tmp_path / "none.safetensors", 6, 4).num_filled == 0

    cache.store(torch.tensor([0]), torch.ones(1, 4))
    cache.save(path)  # overwriting replaces the file whole
    assert TeacherLogitCache.load(path).num_filled == 3

    with pytest.raises(EffmlError, match="teacher.safetensors.*6 samples x 4 classes.*6 x 5"):
        TeacherLogitCache.load(path, num_samples=6, num_classes=5)
    with pytest.raises(EffmlError, match="teacher.safetensors"):
        TeacherLogitCache.open(path, 7, 4)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(EffmlError, match="bad.safetensors"):
        TeacherLogitCache.load(bad)
    with pytest.raises(EffmlError, match="out of range"):
        cache.lookup(torch.tensor([6]))


def test_training_with_a_teacher_moves_the_student_toward_it():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    # A teacher whose prediction depends on the input (its mean colour), so agreeing with it on
    # held-out images needs more than learning its class prior.
    teacher = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 10))
    with torch.no_grad():
        teacher[2].weight.mul_(3.0)
    student = effml.create_model(_tiny_spec())

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 3, 16, 16, generator=gen) * 0.5 + torch.randn(n, 3, 1, 1, generator=gen)

    train_x, test_x = images(128), images(64)
    labels = torch.randint(0, 10, (128,), generator=gen)  # noise: alpha=1 ignores them

    def disagreement() -> float:
        student.eval()
        with torch.no_grad():
            return kd_loss(student(test_x), teacher(test_x), 1.0).item()

    with torch.no_grad():
        t = teacher(test_x)
        prior = torch.softmax(t, 1).mean(0, keepdim=True).log().expand_as(t)
        prior_only = kd_loss(prior, t, 1.0).item()  # the best input-independent prediction
    before = disagreement()
    cache = TeacherLogitCache(128, 10)
    objective = DistillationObjective(teacher, temperature=1.0, alpha=1.0, cache=cache)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    student.train()
    for _ in range(30):
        i = torch.randperm(128, generator=gen)[:32]
        out = objective(student, Batch(train_x[i], labels[i], i))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    after = disagreement()
    assert after < 0.4 * before, (before, after)
    assert after < 0.5 * prior_only, (prior_only, after)
