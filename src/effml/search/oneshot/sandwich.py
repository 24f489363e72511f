"""BigNAS's training step (arXiv 2003.11142, section 3.1) as a pluggable Trainer step.

Per batch: the *sandwich rule* trains the largest child, the smallest child and N random children
(N = 2 in the paper), summing their gradients before one optimizer step; with *inplace
distillation* the largest learns from the labels (with label smoothing) and the others from its
detached soft predictions. Only the largest child is regularized (dropout, drop path; the
optimizer's weight decay is applied once per step, which is the L2 term of the largest child's
loss, the only child that uses every parameter). Children at a lower resolution see the same
batch resized.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from effml.search.oneshot.supernet import Supernet
from effml.spec import NetworkSpec
from effml.train.distributed import unwrap
from effml.train.objective import Batch, StepOutput, classification_loss
from effml.train.step import accumulate_step

if TYPE_CHECKING:
    from effml.train.trainer import Trainer


@dataclass(frozen=True)
class SandwichStep:
    """One BigNAS step over the Trainer's supernet (``trainer.model`` must be a ``Supernet``).

    ``sandwich=False`` (the ablation) draws all N + 2 children at random, the first one taking the
    largest's role (labels, regularization, teacher); ``inplace_distillation=False`` trains every
    child on the labels. The children of step n are drawn from a generator seeded by (seed, n), so
    they are the same on every DDP process and after a resume.
    """

    num_random: int = 2
    sandwich: bool = True
    inplace_distillation: bool = True
    label_smoothing: float = 0.1
    seed: int = 0

    def children(self, supernet: Supernet, step: int) -> list[NetworkSpec]:
        """The children trained at global step ``step``, the teacher first, with the supernet's
        conventions (only the first regularized)."""
        rng = random.Random(f"bignas:{self.seed}:{step}")
        space = supernet.space
        if self.sandwich:
            picked = [space.largest().spec, space.smallest().spec]
            picked += [space.random_member(rng).spec for _ in range(self.num_random)]
        else:
            picked = [space.random_member(rng).spec for _ in range(self.num_random + 2)]
        return [supernet.child_spec(s, regularize=i == 0) for i, s in enumerate(picked)]

    def __call__(self, trainer: Trainer, batch: Batch) -> StepOutput:
        supernet = unwrap(trainer.model)
        if not isinstance(supernet, Supernet):
            raise TypeError(f"SandwichStep trains a Supernet, got {type(supernet).__name__}")
        specs = self.children(supernet, trainer.global_step)
        teacher: list[torch.Tensor] = []

        def first() -> StepOutput:
            logits = trainer.net(batch.images, child=specs[0])
            loss = classification_loss(logits, batch.targets, self.label_smoothing)
            teacher.append(logits.detach().float().softmax(dim=1))
            return StepOutput(loss, logits, {"ce": loss.detach()})

        def other(spec: NetworkSpec) -> Callable[[], StepOutput]:
            def run() -> StepOutput:
                logits = trainer.net(batch.images, child=spec)
                if self.inplace_distillation:
                    loss = classification_loss(logits, teacher[0])
                    return StepOutput(loss, logits, {"kd": loss.detach()})
                loss = classification_loss(logits, batch.targets, self.label_smoothing)
                return StepOutput(loss, logits, {"ce": loss.detach()})
            return run

        return accumulate_step(trainer, [first, *(other(s) for s in specs[1:])])
