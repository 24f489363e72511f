"""What one optimizer step does, as a pluggable function of the Trainer and a batch.

Every step that updates the weights goes through one sequence, ``optimizer_step``: forward
passes, a NaN check and backward each, gradient clipping, the optimizer and schedule steps and
the EMA update. The default step is ``train_step``, one pass of the objective. Search methods
replace it without copying the loop:

- BigNAS's sandwich rule (arXiv 2003.11142, Sec. 3.1) sums the gradients of the largest, the
  smallest and N random children before one update: ``accumulate_step`` with one pass each;
- AutoHAS's shared-weight step is ``accumulate_step`` with one pass and the sampled optimizer;
- AutoHAS (arXiv 2006.03656) rewards a sampled choice with the accuracy of *temporary weights*,
  one virtual optimizer step away from the shared ones: ``temporary_weights`` and
  ``FunctionalModel`` compute and evaluate them without touching the real weights, optimizer
  state or BatchNorm buffers.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.func import functional_call
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel

from effml.errors import EffmlError
from effml.train.objective import Batch, Objective, StepOutput

if TYPE_CHECKING:
    from effml.train.trainer import Trainer


class TrainingDiverged(EffmlError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class StepFn(Protocol):
    """One optimizer step of ``trainer`` on ``batch``: zeroes, accumulates and applies the gradients
    itself and returns the step's output (its loss is what the loop logs)."""

    def __call__(self, trainer: Trainer, batch: Batch) -> StepOutput: ...


@runtime_checkable
class ReportingStep(StepFn, Protocol):
    """A step that adds a few words to the training loop's progress line (AutoHAS: the recent
    reward and the policy's entropy)."""

    def progress(self) -> str:
        """The words, e.g. ``reward 0.512 entropy 0.93``."""
        ...


@runtime_checkable
class StatefulStep(StepFn, Protocol):
    """A step with state of its own (AutoHAS's controller) that the Trainer's checkpoint keeps, so a
    resume continues it exactly."""

    def state_dict(self) -> dict[str, Any]:
        """The state: plain data and tensors (``torch.load(weights_only=True)`` reads it)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict``'s state."""
        ...


def _autocast(device_type: str, enabled: bool) -> torch.autocast:
    return torch.autocast(device_type, dtype=torch.bfloat16 if device_type == "cpu" else torch.float16,
                          enabled=enabled)


def _check_finite(loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"the loss became {loss.item()}")


def optimizer_step(model: nn.Module, passes: Iterable[Callable[[], StepOutput]], optimizer: Optimizer,
                   scheduler: LRScheduler, ema: AveragedModel | None, grad_clip: float | None, *,
                   amp: bool = False, device_type: str = "cpu") -> list[StepOutput]:
    """The one optimizer-step sequence: per pass, its forward (autocast when ``amp``), a finiteness
    check and its backward (the gradients zeroed before the first); then gradient clipping, the
    optimizer step, the schedule step and the EMA update of ``model``. Returns the passes' outputs,
    detached.

    Each pass's backward runs, freeing its graph, before the next pass starts, so the update uses
    the sum of the passes' gradients. Raises ``TrainingDiverged`` (with no update applied and the
    gradients cleared) when a pass's loss is not finite. ``optimizer`` may be another one than the
    schedule's (AutoHAS's sampled optimizer); the schedule steps all the same.
    """
    outs: list[StepOutput] = []
    for p in passes:
        with _autocast(device_type, amp):
            out = p()
        if not outs:  # just before the first backward (the single-pass step's order)
            optimizer.zero_grad(set_to_none=True)
        try:
            _check_finite(out.loss)
        except TrainingDiverged:
            optimizer.zero_grad(set_to_none=True)
            raise
        out.loss.backward()
        outs.append(StepOutput(out.loss.detach(), out.logits.detach(), out.parts))
    if not outs:
        raise EffmlError("the optimizer step got no passes; give it at least one closure")
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    with warnings.catch_warnings():
        if optimizer is not scheduler.optimizer:  # the schedule's own optimizer did not step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()
    if ema is not None:
        ema.update_parameters(model)
    return outs


def train_step(net: nn.Module, model: nn.Module, batch: Batch, objective: Objective,
               optimizer: Optimizer, scheduler: LRScheduler, ema: AveragedModel | None,
               grad_clip: float | None, *, amp: bool = False) -> StepOutput:
    """One optimizer step of ``net`` (``model`` unwrapped) on ``batch`` (``optimizer_step`` with one
    pass of the objective); raises ``TrainingDiverged`` before the backward pass if the loss is not
    finite."""
    return optimizer_step(model, [lambda: objective(net, batch)], optimizer, scheduler, ema, grad_clip,
                          amp=amp, device_type=batch.images.device.type)[0]


def default_step(trainer: Trainer, batch: Batch) -> StepOutput:
    """The standard step (``train_step``) on the trainer's model, objective and optimizer."""
    return train_step(trainer.net, trainer.model, batch, trainer.objective, trainer.optimizer,
                      trainer.scheduler, trainer.ema, trainer.cfg.optim.grad_clip, amp=trainer.cfg.train.amp)


def accumulate_step(trainer: Trainer, passes: Iterable[Callable[[], StepOutput]], *,
                    optimizer: Optimizer | None = None) -> StepOutput:
    """One optimizer step (``optimizer_step``) of the trainer on the summed gradients of several
    forward passes.

    Each pass returns a ``StepOutput`` (e.g. ``trainer.objective(trainer.net, batch)`` with one
    child of a supernet active). The result's loss is the sum of the passes' losses, its logits the
    first pass's, and its parts each pass's parts suffixed by the pass number. ``optimizer``
    defaults to the trainer's (AutoHAS passes the sampled one). Raises ``TrainingDiverged`` (with
    no update applied) when a pass's loss is not finite.
    """
    outs = optimizer_step(trainer.model, passes, trainer.optimizer if optimizer is None else optimizer,
                          trainer.scheduler, trainer.ema, trainer.cfg.optim.grad_clip,
                          amp=trainer.cfg.train.amp, device_type=trainer.device.type)
    parts = {f"{k}_{i}": v for i, o in enumerate(outs) for k, v in o.parts.items()}
    return StepOutput(torch.stack([o.loss.float() for o in outs]).sum(), outs[0].logits, parts)


class FunctionalModel(nn.Module):
    """``model`` run with ``weights`` (parameter and buffer tensors by name) in place of its own,
    through ``torch.func.functional_call``; BatchNorm updates land in ``weights``, not in ``model``."""

    def __init__(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.weights = weights
        # mirror the mode without calling .train(), which would undo a frozen BatchNorm's eval mode
        self.training = model.training

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped model's forward pass on the substituted tensors."""
        return functional_call(self.model, self.weights, args, kwargs)


def _shadow_optimizer(optimizer: Optimizer, params: dict[int, torch.Tensor]) -> Optimizer:
    """A copy of ``optimizer`` (class, hyper-parameters, deep-copied state) over ``params``
    (real parameter id -> stand-in tensor); stepping it leaves ``optimizer`` untouched."""
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [params[id(p)] for p in g["params"]]} for g in optimizer.param_groups]
    accepted = inspect.signature(type(optimizer).__init__).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    try:
        shadow = type(optimizer)(groups, **defaults)
    except TypeError as e:
        raise EffmlError(f"cannot copy the optimizer {type(optimizer).__name__} for temporary weights "
                         f"({e}); use optim.name=sgd, adamw or rmsprop_tf") from None
    shadow.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    return shadow


def temporary_weights(trainer: Trainer, batch: Batch, *, lr: float | None = None,
                      weight_decay: float | list[float] | None = None, optimizer: Optimizer | None = None,
                      loss: Callable[[nn.Module, Batch], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers after one virtual optimizer step on ``batch`` (AutoHAS's
    temporary weights, arXiv 2006.03656); the real weights, optimizer state, BatchNorm buffers,
    schedule and EMA are untouched.

    The step uses the optimizer's class, hyper-parameters and state (momentum, RMSProp averages) on
    copies, gradient clipping as configured, and the current learning rate unless ``lr`` (or
    ``weight_decay``: on the groups that decay, or a list with one value per group) is given, e.g.
    a sampled hyper-parameter.
    ``optimizer`` defaults to the trainer's (AutoHAS keeps one per optimizer choice) and ``loss``
    (the model to run, the batch -> the loss) to the trainer's objective. Evaluate the result with
    ``trainer.evaluate(split, weights=...)``.
    """
    model = trainer.model
    weights = {name: b.detach().clone() for name, b in model.named_buffers()}
    stand_in: dict[int, torch.Tensor] = {}
    for name, p in model.named_parameters():
        weights[name] = stand_in[id(p)] = p.detach().clone().requires_grad_(p.requires_grad)
    with _autocast(trainer.device.type, trainer.cfg.train.amp):
        functional = FunctionalModel(model, weights)
        value = trainer.objective(functional, batch).loss if loss is None else loss(functional, batch)
    _check_finite(value)
    trainable = [t for t in stand_in.values() if t.requires_grad]
    grads = torch.autograd.grad(value, trainable, allow_unused=True)
    for t, g in zip(trainable, grads):
        t.grad = g
    if trainer.cfg.optim.grad_clip:
        torch.nn.utils.clip_grad_norm_(trainable, trainer.cfg.optim.grad_clip)
    shadow = _shadow_optimizer(trainer.optimizer if optimizer is None else optimizer, stand_in)
    for i, group in enumerate(shadow.param_groups):
        if lr is not None:
            group["lr"] = lr
        if isinstance(weight_decay, (list, tuple)):
            group["weight_decay"] = weight_decay[i]
        elif weight_decay is not None and group["weight_decay"]:
            group["weight_decay"] = weight_decay
    shadow.step()
    return {name: t.detach() for name, t in weights.items()}
