"""Optimizers and learning-rate schedules of the EfficientNet recipe (tensorflow/tpu efficientnet main.py, utils.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from effml.train.config import OptimConfig, ScheduleConfig


# Elements per multi-tensor call on CPU: small enough that a chunk's parameters, gradients and
# state stay in cache across the update's nine passes (one call over all of B0 is slower).
_CPU_CHUNK_NUMEL = 1 << 16


class RMSpropTF(Optimizer):
    """RMSProp as TensorFlow computes it (``tf.train.RMSPropOptimizer`` with momentum).

    Differs from ``torch.optim.RMSprop`` in three ways that matter for the EfficientNet recipe:
    the mean square starts at 1 (not 0), ``eps`` is added *inside* the square root, and the
    learning rate is applied inside the momentum buffer. Weight decay is the TF L2-in-loss form
    (``grad += weight_decay * param``). The update runs on torch's multi-tensor (foreach) ops.
    """

    def __init__(self, params: Iterable, lr: float = 0.016, decay: float = 0.9,
                 momentum: float = 0.9, eps: float = 1e-3, weight_decay: float = 0.0) -> None:
        if lr < 0 or not 0 <= decay < 1 or momentum < 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"invalid RMSpropTF settings lr={lr} decay={decay} momentum={momentum} "
                             f"eps={eps} weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.ones_like(p)
                    state["momentum_buffer"] = torch.zeros_like(p)
            for chunk in _chunks(params):
                _rmsprop_tf_update(chunk, [p.grad for p in chunk],
                                   [self.state[p]["square_avg"] for p in chunk],
                                   [self.state[p]["momentum_buffer"] for p in chunk],
                                   lr=group["lr"], decay=group["decay"], momentum=group["momentum"],
                                   eps=group["eps"], weight_decay=group["weight_decay"])
        return loss


def _chunks(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``params`` in runs of about ``_CPU_CHUNK_NUMEL`` elements on CPU; in one run elsewhere."""
    if not params or params[0].device.type != "cpu":
        return [params] if params else []
    chunks, current, numel = [], [], 0
    for p in params:
        current.append(p)
        numel += p.numel()
        if numel >= _CPU_CHUNK_NUMEL:
            chunks.append(current)
            current, numel = [], 0
    if current:
        chunks.append(current)
    return chunks


def _rmsprop_tf_update(params: list[torch.Tensor], grads: list[torch.Tensor],
                       square_avgs: list[torch.Tensor], momentum_buffers: list[torch.Tensor], *,
                       lr: float, decay: float, momentum: float, eps: float,
                       weight_decay: float) -> None:
    """The TF RMSProp update of ``params`` in place, with multi-tensor ops."""
    if weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(square_avgs, decay)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - decay)
    denom = torch._foreach_add(square_avgs, eps)
    torch._foreach_sqrt_(denom)
    torch._foreach_mul_(momentum_buffers, momentum)
    torch._foreach_addcdiv_(momentum_buffers, grads, denom, value=lr)
    torch._foreach_sub_(params, momentum_buffers)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay; BatchNorm parameters and biases (ndim <= 1) without."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> Optimizer:
    """The configured optimizer over ``model``'s trainable parameters."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "rmsprop_tf":
        return RMSpropTF(groups, lr=cfg.lr, decay=cfg.decay, momentum=cfg.momentum, eps=cfg.eps)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, cfg: ScheduleConfig, steps_per_epoch: int, total_steps: int) -> float:
    """The multiplier of the base learning rate at optimizer step ``step``.

    Exponential follows TF ``utils.build_learning_rate``: staircase decay counted from step 0,
    replaced by a linear ramp during warm-up.
    """
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return cfg.warmup_lr_factor + (1 - cfg.warmup_lr_factor) * step / warmup
    if cfg.name == "exponential":
        decay_steps = max(1, int(cfg.decay_epochs * steps_per_epoch))
        # BigNAS's "exponential decay with constant ending" (arXiv 2003.11142, section 3.1) when
        # min_lr_factor > 0: the rate decays until it reaches that floor, then stays there
        return max(cfg.decay_rate ** (step // decay_steps), cfg.min_lr_factor)
    if cfg.name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(optimizer: Optimizer, cfg: ScheduleConfig, steps_per_epoch: int,
                    total_steps: int) -> LambdaLR:
    """A per-step ``LambdaLR`` implementing ``lr_factor``."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, total_steps))
