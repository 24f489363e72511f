"""AdvProp (Xie et al., CVPR 2020): adversarial examples as extra training data, with auxiliary BNs.

Each step makes PGD adversarial images from the clean batch through the auxiliary BNs, then
minimises CE(clean, main BNs) + CE(adversarial, auxiliary BNs) with equal weights
(arXiv 1911.09665, section 4.2, Algorithm 1). Evaluate with the main BNs only (``strip_aux_bn``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from effml.errors import EffmlError
from effml.layers.aux_bn import use_aux_bn
from effml.train.objective import Batch, StepOutput, classification_loss

Stats = Sequence[float] | torch.Tensor


def paper_steps(epsilon: float) -> int:
    """PGD iterations the paper pairs with ``epsilon``: n = epsilon + 1, except n = 1 at epsilon = 1."""
    # AdvProp, arXiv 1911.09665, section 5.1: eps in {1, 2, 3, 4} -> n in {1, 3, 4, 5}
    return 1 if epsilon <= 1 else math.ceil(epsilon) + 1


def _channel_stats(values: Stats, like: torch.Tensor) -> torch.Tensor:
    """Per-channel mean or std as a ``[1, C, 1, 1]`` tensor on ``like``'s device and dtype."""
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device).reshape(1, -1, 1, 1)
    if t.shape[1] not in (1, like.shape[1]):
        raise EffmlError(f"normalisation stats have {t.shape[1]} channels but the images have {like.shape[1]}")
    return t


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DataParallel/DDP: the attack's grad-only backward must not touch the reducer."""
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    return model.module if isinstance(model, parallel) else model


class PGDAttacker:
    """L-inf projected gradient descent in pixel space, epsilon and step in 0-255 units.

    Defaults are the paper's (arXiv 1911.09665, section 5.1): epsilon 1, step 1, paper_steps(eps)
    iterations. ``targeted``: descend the loss of a random *wrong* label, as in the authors' earlier
    adversarial-training code and the third-party AdvProp port (the paper does not say otherwise);
    ``targeted=False`` ascends the loss of the true label (Madry et al.), the usual robustness metric.

    BN during the attack: by default the model keeps its mode, so in training the BNs normalise
    with *batch* statistics, as the training forward of the adversarial batch then does; the
    attack thus maximises the very loss term the step minimises, not that of a network with
    (lagging, and at the start of training meaningless) running averages. Running statistics are
    frozen either way (buffers restored afterwards): the auxiliary BN must track the final
    adversarial batches, not the intermediate PGD iterates. ``eval_mode=True`` runs the attack in
    eval mode (running statistics, no dropout/drop path) like the reference ports.
    """

    def __init__(
        self,
        epsilon: float = 1.0,
        step_size: float = 1.0,
        steps: int | None = None,
        random_start: bool = True,
        targeted: bool = True,
        eval_mode: bool = False,
    ) -> None:
        if epsilon < 0 or step_size <= 0 or (steps is not None and steps < 0):
            raise EffmlError(
                f"PGDAttacker: need epsilon >= 0, step_size > 0, steps >= 0; got epsilon={epsilon}, "
                f"step_size={step_size}, steps={steps}"
            )
        self.epsilon = epsilon
        self.step_size = step_size
        self.steps = paper_steps(epsilon) if steps is None else steps
        self.random_start = random_start
        self.targeted = targeted
        self.eval_mode = eval_mode

    def __repr__(self) -> str:
        return (
            f"PGDAttacker(epsilon={self.epsilon}, step_size={self.step_size}, steps={self.steps}, "
            f"random_start={self.random_start}, targeted={self.targeted}, eval_mode={self.eval_mode})"
        )

    def __call__(
        self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, mean: Stats, std: Stats
    ) -> torch.Tensor:
        """Adversarial versions of normalised ``images`` (normalised the same way), detached."""
        images = images.detach()
        if self.epsilon == 0 or self.steps == 0:
            return images.clone()
        mean_t, std_t = _channel_stats(mean, images), _channel_stats(std, images)
        clean = images * std_t + mean_t
        eps, alpha = self.epsilon / 255.0, self.step_size / 255.0
        # the box that is both the eps-ball and [0, 1]; a pixel already outside [0, 1] (random
        # erasing in normalised space) may move only towards the range, never past the ball
        low = torch.maximum(clean - eps, clean.clamp(max=0.0))
        high = torch.minimum(clean + eps, clean.clamp(min=1.0))
        x = clean + torch.empty_like(clean).uniform_(-eps, eps) if self.random_start else clean
        x = torch.clamp(x, low, high)
        hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
        goal: torch.Tensor | None = None

        modules = list(model.modules())
        modes = [m.training for m in modules]
        saved = [(b, b.clone()) for b in model.buffers()]
        try:
            if self.eval_mode:
                model.eval()
            for _ in range(self.steps):
                x = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    logits = model((x - mean_t) / std_t)
                    if goal is None:
                        goal = self._goal(logits, hard, targets)
                    loss = F.cross_entropy(logits.float(), goal, reduction="sum")
                # grad w.r.t. the input only: parameter .grad stays untouched
                (grad,) = torch.autograd.grad(loss, x)
                direction = -grad.sign() if self.targeted else grad.sign()
                x = torch.clamp(x.detach() + alpha * direction, low, high)
        finally:
            for m, mode in zip(modules, modes):
                m.training = mode
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)
        return ((x - mean_t) / std_t).detach()

    def _goal(self, logits: torch.Tensor, hard: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The label the attack moves towards (targeted) or away from (untargeted)."""
        if not self.targeted:
            return targets
        classes = logits.shape[1]
        if classes < 2:
            raise EffmlError("a targeted attack needs at least two classes")
        # a uniformly random label other than the true one
        offset = torch.randint(1, classes, hard.shape, device=hard.device)
        return (hard + offset) % classes


class AdvPropObjective:
    """AdvProp's loss: CE(clean, main BNs) + CE(PGD images, auxiliary BNs); logits are the clean ones."""

    def __init__(self, attacker: PGDAttacker, mean: Stats, std: Stats, label_smoothing: float = 0.1) -> None:
        self.attacker = attacker
        self.mean = mean
        self.std = std
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, batch: Batch) -> StepOutput:
        net = _unwrap(model)
        with use_aux_bn(net, True):
            adv_images = self.attacker(net, batch.images, batch.targets, self.mean, self.std)
        with use_aux_bn(net, False):
            logits = model(batch.images)
        with use_aux_bn(net, True):
            adv_logits = model(adv_images)
        clean = classification_loss(logits, batch.targets, self.label_smoothing)
        adv = classification_loss(adv_logits, batch.targets, self.label_smoothing)
        return StepOutput(clean + adv, logits, {"clean": clean.detach(), "adv": adv.detach()})


def _images_targets(item: Batch | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and targets from a ``Batch`` or an ``(images, targets, ...)`` tuple."""
    if isinstance(item, Batch):
        return item.images, item.targets
    return item[0], item[1]


def evaluate_under_attack(
    model: nn.Module,
    batches: Iterable[Batch | Sequence[torch.Tensor]],
    attacker: PGDAttacker,
    mean: Stats,
    std: Stats,
) -> dict[str, float]:
    """Top-1 (percent) on clean and on attacked images; eval mode, main BNs only."""
    modules = list(model.modules())
    modes = [m.training for m in modules]
    clean_correct = adv_correct = total = 0
    try:
        model.eval()
        with use_aux_bn(model, False):  # a no-op on a plain model
            for item in batches:
                images, targets = _images_targets(item)
                hard = targets if targets.ndim == 1 else targets.argmax(dim=1)
                with torch.no_grad():
                    clean_correct += int((model(images).argmax(dim=1) == hard).sum())
                adv_images = attacker(model, images, targets, mean, std)
                with torch.no_grad():
                    adv_correct += int((model(adv_images).argmax(dim=1) == hard).sum())
                total += hard.numel()
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode
    if total == 0:
        raise EffmlError("evaluate_under_attack: no batches to evaluate")
    return {"clean_top1": 100.0 * clean_correct / total, "adv_top1": 100.0 * adv_correct / total}
