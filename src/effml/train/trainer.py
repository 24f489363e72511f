"""The Trainer: one training run's model, optimizer, schedule, EMA, data and objective, stepped
from outside.

``engine.fit`` is the loop over a Trainer (run directory, logs, checkpoints, outputs); a search
drives one directly: many short trials in one process, a pluggable step (``effml.train.step``),
evaluation on a held-out part of the training set (``data.holdout``).
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from effml.data.datasets import image_file
from effml.errors import EffmlError, InputError
from effml.zoo import resolve_spec
from effml.train import distributed
from effml.train.bn_calibration import recalibrate_bn
from effml.train.checkpoint import load_checkpoint as read_checkpoint
from effml.train.checkpoint import rng_state, set_rng_state
from effml.train.checkpoint import save_checkpoint as write_checkpoint
from effml.train.config import Config, config_to_dict
from effml.train.data import build_datasets, epoch_indices, eval_loader, train_loader
from effml.train.ema import create_ema
from effml.train.objective import Batch, Objective, StepOutput
from effml.train.optim import build_optimizer, build_scheduler
from effml.train.resolve import resolve_model
from effml.train.step import FunctionalModel, StatefulStep, StepFn, TrainingDiverged, default_step
from effml.train.tasks import task_for

Split = Literal["val", "holdout"]


def seed_everything(seed: int) -> None:
    """Seed every global RNG a run may draw from: torch (CPU and CUDA), Python, NumPy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextmanager
def preserved_global_state() -> Iterator[None]:
    """Restore on exit what a run changes globally: the RNGs (torch, CUDA, Python, NumPy), torch's
    intra-op thread count and its deterministic-algorithm flags."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng, np_rng = rng_state(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        set_rng_state(rng)
        np.random.set_state(np_rng)


def _set_train_mode(model: nn.Module, freeze_bn: bool | str) -> None:
    model.train()
    if freeze_bn:
        frozen = model if freeze_bn is True else getattr(model, "module", model).backbone
        for m in frozen.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class Trainer:
    """A training run held in memory: build it from a config, then ``step()``, ``train_epoch()``,
    ``evaluate()``; ``state_dict()`` is everything ``--resume`` restores.

    ``model`` is what ``effml.train.resolve`` resolves: a zoo name, a spec JSON path, a run
    directory, a spec (e.g. a search sample) or a module built from a spec (a module, or a run's
    model, is trained in place; ``cfg.model`` overrides other than ``weights`` do not apply to
    it); default ``cfg.model.name``. ``step`` replaces the optimizer step (``StepFn``).
    Constructing a Trainer seeds the global RNGs from ``cfg.train.seed`` and applies
    ``train.threads`` / ``train.deterministic``; wrap it in ``preserved_global_state()`` (as
    ``fit`` does) to leave no trace. Under torchrun, pass the ``ctx`` of
    ``distributed.setup`` and call ``distributed.teardown()`` when done.
    """

    def __init__(self, cfg: Config, *, model: Any = None, objective: Objective | None = None,
                 step: StepFn | None = None, ctx: distributed.DistContext | None = None) -> None:
        if isinstance(model, str):
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=model))
            model = None
        self.cfg = cfg
        self.ctx = ctx or distributed.setup(cfg.train.device)
        self.model_name = cfg.model.name if model is None else type(model).__name__
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.train.seed)

        m = cfg.model
        resolved = resolve_model(m.name if model is None else model, weights=m.weights or None,
                                 drop_classifier=m.drop_classifier)
        self.preprocess = resolved.preprocess
        self.bundle = build_datasets(cfg, self.preprocess)
        self.num_classes = m.num_classes or len(self.bundle.classes)
        if self.num_classes < len(self.bundle.classes):
            n = len(self.bundle.classes)
            raise EffmlError(f"model.num_classes={self.num_classes} but the data ({cfg.data.dataset}) has {n} classes, "
                             f"labelled 0-{n - 1}: the model needs an output per class; drop model.num_classes "
                             f"(it follows the data) or set it to {n}")
        if resolved.net is None:
            self.spec = resolve_spec(resolved.spec, num_classes=self.num_classes, dropout=m.dropout,
                                     drop_path=m.drop_path, bn_momentum=m.bn_momentum, bn_eps=m.bn_eps,
                                     resolution=cfg.data.image_size)
        else:
            # a built module keeps its own settings; only the recorded input size follows the data
            self.spec = resolve_spec(resolved.spec, resolution=cfg.data.image_size)
            have = getattr(self.spec, "num_classes", self.num_classes)
            if have != self.num_classes:
                raise EffmlError(f"the model given has {have} classes but the data has {self.num_classes}; "
                                 f"build it with num_classes={self.num_classes} or set model.num_classes")
        self.task = task_for(self.spec)
        net = resolved.build(self.spec)
        if cfg.model.freeze_bn == "backbone" and not isinstance(getattr(net, "backbone", None), nn.Module):
            raise EffmlError(f"model.freeze_bn=backbone: {self.model_name} has no backbone (a detector's); "
                             "use model.freeze_bn=true to freeze every BatchNorm")
        if cfg.model.backbone_weights and cfg.model.weights:
            raise EffmlError("model.weights (the whole network) and model.backbone_weights (its backbone) are "
                             "both set: keep one")
        if cfg.model.backbone_weights:
            from effml.models.weights import load_backbone_weights

            load_backbone_weights(net, cfg.model.backbone_weights)
        if cfg.advprop.enabled:
            from effml.layers.aux_bn import convert_to_advprop

            net = convert_to_advprop(net)
        net = net.to(self.device)
        if cfg.train.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if cfg.train.qat:
            net = self._prepare_qat(net)
        self.model: nn.Module = net
        self.ema = create_ema(self.model, cfg.train.ema_decay) if cfg.train.ema_decay else None
        self.net = distributed.wrap(self.model, self.ctx, cfg.train.sync_bn)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        seed, rank, world = cfg.train.seed, self.ctx.rank, self.ctx.world
        self.steps_per_epoch = len(epoch_indices(self.bundle.train, 0, seed, rank, world)) // cfg.data.batch_size
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.steps_per_epoch, self.total_steps)
        # train.qat: BatchNorm statistics freeze from this step on (None: never)
        self.bn_freeze_step = round(cfg.train.qat_freeze_bn * self.total_steps) if cfg.train.qat else None
        self.objective = objective or self.task.objective(cfg, self.net, self.spec, self.preprocess,
                                                          len(self.bundle.train), self.device)
        self.mixer = self.task.mixer(cfg, self.num_classes)
        self.step_fn: StepFn = step or default_step
        self.epoch, self.batch_in_epoch, self.global_step, self.skipped = 0, 0, 0, 0
        self.last_batch_size = 0  # images in the last step's batch (after skipping unreadable ones)
        # Batches that lost so many unreadable images that fewer than ``min_batch`` were left are
        # dropped (a BatchNorm cannot train on one image), counted here, and take no step.
        self.dropped_batches = 0
        self.min_batch = min(2, cfg.data.batch_size)
        self._unusable: list[int] = [0, 0]  # images tried, unreadable, since the last usable batch
        self._tried: list[int] = [0, 0]  # images tried, unreadable, in this session
        self._unreadable_examples: list[str] = []
        self._epoch_order: list[int] = []
        self._batches: Iterator | None = None
        self._eval_loaders: dict[str, DataLoader] = {}

    # -- where the run stands ----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return self.ctx.device

    @property
    def lr(self) -> float:
        """The learning rate of the next step (first parameter group)."""
        return self.scheduler.get_last_lr()[0]

    @property
    def finished(self) -> bool:
        """True when the step budget or the last epoch is reached."""
        return self.global_step >= self.total_steps or self.epoch >= self.cfg.train.epochs

    @property
    def num_parameters(self) -> int:
        """Number of model parameters."""
        return sum(p.numel() for p in self.model.parameters())

    def _prepare_qat(self, net: nn.Module) -> nn.Module:
        """``train.qat``: the classifier made quantization-aware (``effml.train.qat``)."""
        from effml.train.qat import prepare_qat

        if self.task.name != "classify":
            raise InputError(f"train.qat=true: quantization-aware training is for classifiers; {self.model_name} is "
                             f"a {self.task.name} model (export it with `effml export --int8`, whose per-layer fp32 "
                             f"fallback covers detectors); set train.qat=false")
        if self.cfg.advprop.enabled:
            raise InputError("train.qat=true with advprop.enabled=true: fine-tune for int8 without AdvProp "
                             "(set advprop.enabled=false)")
        return prepare_qat(net, reduce_range=self.cfg.train.qat_reduce_range)

    # -- training ------------------------------------------------------------------------------
    def _bn_frozen(self) -> bool | str:
        """``model.freeze_bn``, or True once ``train.qat`` has frozen the BatchNorm statistics."""
        if self.bn_freeze_step is not None and self.global_step >= self.bn_freeze_step:
            return True
        return self.cfg.model.freeze_bn

    def train_mode(self) -> None:
        """Put the network in training mode (BatchNorms stay in eval mode under ``model.freeze_bn``,
        and under ``train.qat`` after ``train.qat_freeze_bn`` of the steps)."""
        _set_train_mode(self.net, self._bn_frozen())

    def _epoch_batches(self) -> Iterator:
        train, bs = self.bundle.train, self.cfg.data.batch_size
        train.set_epoch(self.epoch)
        indices = epoch_indices(train, self.epoch, self.cfg.train.seed, self.ctx.rank, self.ctx.world)
        self._epoch_order = indices
        self.train_mode()
        return iter(train_loader(train, indices[self.batch_in_epoch * bs:], bs, self.cfg.data.workers,
                                 pin_memory=self.device.type == "cuda"))

    def _usable(self, images: torch.Tensor) -> bool:
        """Whether the batch has ``min_batch`` images, on every process (they drop a batch together)."""
        usable = len(images) >= self.min_batch
        if self.ctx.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([0 if usable else 1], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            usable = not bool(flag.item())
        return usable

    def _check_unreadable(self, kept: torch.Tensor, n_skipped: int, usable: bool) -> None:
        """Count a batch's unreadable images; raise when the training data is (nearly) all bad.

        With T = max(64, 2 x batch_size) training images (at most one epoch's worth), it is an
        error when T images in a row gave no usable batch, or when more than half of at least T
        images tried were unreadable: ``data.on_corrupt=skip`` skips a few bad files, not a
        broken data set. The message says how many were unreadable, where, and names some.
        """
        bs = self.cfg.data.batch_size
        tried = len(kept) + n_skipped
        self._tried[0] += tried
        self._tried[1] += n_skipped
        if usable:
            self._unusable = [0, 0]
        else:
            self.dropped_batches += 1
            self._unusable[0] += tried
            self._unusable[1] += n_skipped
        train = self.bundle.train
        if n_skipped and len(self._unreadable_examples) < 3:
            start = self.batch_in_epoch * bs
            gone = sorted(set(self._epoch_order[start:start + bs]) - set(kept.tolist()))
            files = [image_file(train, i) for i in gone[:3 - len(self._unreadable_examples)]]
            self._unreadable_examples += [str(f) for f in files if f is not None]
        limit = min(max(64, 2 * bs), max(self.steps_per_epoch * bs, 1))
        root = getattr(train, "root", None) or getattr(train, "image_dir", None)
        where = f" under {root}" if root is not None else ""
        examples = f" (e.g. {', '.join(self._unreadable_examples)})" if self._unreadable_examples else ""
        advice = ("data.on_corrupt=skip skips a few bad files, not a broken data set: check or remove "
                  "the unreadable files")
        if self._unusable[0] >= limit:
            raise InputError(
                f"training stopped: {self._unusable[1]} of the last {self._unusable[0]} training images "
                f"tried{where} were unreadable{examples}, leaving no batch with the {self.min_batch} "
                f"images a step needs; {advice}")
        if self._tried[0] >= limit and 2 * self._tried[1] > self._tried[0]:
            raise InputError(
                f"training stopped: {self._tried[1]} of {self._tried[0]} training images tried{where} "
                f"were unreadable{examples}, more than half; {advice}")
        if not usable and self.dropped_batches == 1:
            warnings.warn(f"dropped a training batch left with {len(kept)} readable image(s) of {bs} "
                          f"(a step needs {self.min_batch}){examples}; such batches take no step and are "
                          f"counted in Trainer.dropped_batches", stacklevel=3)

    def _next_batch(self, cross_epochs: bool) -> Batch | None:
        """The next batch of the epoch with at least ``min_batch`` readable images.

        Unreadable images (``data.on_corrupt=skip``) are left out of their batch; a batch left with
        fewer than ``min_batch`` is dropped (its place in the epoch is used up, no step is taken,
        ``dropped_batches`` counts it) rather than refilled, so that the epoch's order and a resume
        stay exact. Mostly unreadable data raises (see ``_check_unreadable``).
        """
        while True:
            if self.batch_in_epoch >= self.steps_per_epoch:
                if not cross_epochs:
                    return None
                self.end_epoch()
                if self.finished:
                    raise EffmlError(self._finished_message())
            if self._batches is None:
                self._batches = self._epoch_batches()
            images, targets, idx, n_skipped = next(self._batches)
            self.skipped += n_skipped
            usable = self._usable(images)
            self._check_unreadable(idx, n_skipped, usable)
            if not usable:
                self.batch_in_epoch += 1
                continue
            images = images.to(self.device, non_blocking=True)
            targets = self.task.targets_to(targets, self.device)
            if self.cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if self.mixer is not None:
                images, targets = self.mixer(images, targets)
            self.last_batch_size = len(images)
            return Batch(images, targets, idx)

    def _step(self, cross_epochs: bool) -> StepOutput | None:
        try:
            batch = self._next_batch(cross_epochs)
            if batch is None:
                return None
            if self.global_step == self.bn_freeze_step:
                self.train_mode()  # train.qat: the BatchNorm statistics freeze here
            out = self.step_fn(self, batch)
        except TrainingDiverged as e:
            self._batches = None  # a retry starts again at this batch
            raise TrainingDiverged(f"{e} at epoch {self.epoch + 1}, step {self.batch_in_epoch + 1} "
                                   f"(global step {self.global_step + 1})") from None
        except BaseException:
            self._batches = None
            raise
        self.global_step += 1
        self.batch_in_epoch += 1
        return out

    def _finished_message(self) -> str:
        return (f"the run has finished ({self.global_step} steps, epoch {self.epoch} of "
                f"{self.cfg.train.epochs}); raise train.epochs or train.max_steps to train further")

    def step(self) -> StepOutput:
        """One optimizer step (``self.step_fn``) on the next training batch; when an epoch runs
        out of batches the next one starts."""
        if self.finished:
            raise EffmlError(self._finished_message())
        out = self._step(cross_epochs=True)
        if out is None:  # not reached: crossing into the next epoch finds a batch or raises
            raise EffmlError(self._finished_message())
        return out

    def epoch_steps(self) -> Iterator[StepOutput]:
        """Step through the rest of the current epoch (or up to the step budget), yielding each
        step's output; ``end_epoch()`` then starts the next epoch."""
        while not self.finished and self.batch_in_epoch < self.steps_per_epoch:
            out = self._step(cross_epochs=False)
            if out is None:
                return
            yield out

    def end_epoch(self) -> bool:
        """Start the next epoch if the current one has used all its batches; True if it did."""
        if self.batch_in_epoch < self.steps_per_epoch:
            return False
        self.epoch, self.batch_in_epoch, self._batches = self.epoch + 1, 0, None
        return True

    def train_epoch(self) -> dict[str, float]:
        """Train to the end of the current epoch (or the step budget): mean loss and step count."""
        losses = [out.loss.detach().float() for out in self.epoch_steps()]
        self.end_epoch()
        mean = torch.stack(losses).mean().item() if losses else float("nan")
        return {"loss": mean, "steps": len(losses)}

    # -- evaluation ----------------------------------------------------------------------------
    def dataset(self, split: Split) -> Any:
        """The validation set, or the held-out part of the training set (``data.holdout``)."""
        if split == "val":
            return self.bundle.val
        if split == "holdout":
            if self.bundle.holdout is None:
                raise EffmlError("no held-out split: set data.holdout to a fraction of the training set "
                                 "(e.g. data.holdout=0.1)")
            return self.bundle.holdout
        raise EffmlError(f"split must be 'val' or 'holdout', got {split!r}")

    def eval_batches(self, split: Split = "val") -> DataLoader:
        """This process's shard of ``split`` in evaluation batches (the eval transform)."""
        if split not in self._eval_loaders:
            bs = self.cfg.data.eval_batch_size or self.cfg.data.batch_size
            self._eval_loaders[split] = eval_loader(self.dataset(split), bs, self.cfg.data.workers,
                                                    self.ctx.rank, self.ctx.world)
        return self._eval_loaders[split]

    def evaluate(self, split: Split = "val", *, ema: bool = False,
                 weights: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """The task's metrics on ``split``, of the model, its EMA (``ema``), or the model with
        substituted ``weights`` (e.g. ``effml.train.step.temporary_weights``)."""
        if weights is not None:
            model: nn.Module = FunctionalModel(self.model, weights)
        elif ema:
            if self.ema is None:
                raise EffmlError("this run keeps no EMA (train.ema_decay is null)")
            model = self.ema.module
        else:
            model = self.net
        training = self.net.training
        try:
            return self.task.evaluate(self.cfg, model, self.eval_batches(split), self.device,
                                      self.dataset(split))
        finally:
            if training:
                self.train_mode()

    def recalibrate_bn(self, num_batches: int) -> int:
        """Re-estimate the BatchNorm statistics of the model and its EMA on ``num_batches`` training
        batches (``effml.train.bn_calibration``); BNs frozen by ``model.freeze_bn`` are kept.

        The batches are the same on every process (the first of a permutation fixed by the seed),
        drawn without touching the global RNGs, so training and a resume go on exactly as without it.
        """
        if self._bn_frozen() is True or num_batches <= 0:
            return 0
        training = self.net.training
        with preserved_global_state():
            batches = self.calibration_batches(num_batches)
            used = 0
            for model in [self.model] + ([self.ema.module] if self.ema is not None else []):
                frozen = getattr(model, "backbone", None) if self.cfg.model.freeze_bn == "backbone" else None
                used = recalibrate_bn(model, batches, frozen=frozen)
        if training:
            self.train_mode()
        return used

    def calibration_batches(self, num_batches: int) -> list[torch.Tensor]:
        """Up to ``num_batches`` training image batches (train transform, on the device) for BatchNorm
        calibration: the first of a permutation fixed by the seed, the same on every process."""
        train, bs = self.bundle.train, self.cfg.data.batch_size
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.cfg.train.seed))
        indices = order[:num_batches * bs].tolist()
        with preserved_global_state():
            return [b[0].to(self.device) for b in train_loader(train, indices, bs, self.cfg.data.workers)
                    if len(b[0]) >= self.min_batch]

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume restores: model, optimizer, schedule, EMA, RNGs, the position in
        the epoch, the skipped-image count, a stateful step's state (and the config, for the record)."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
            "rng": rng_state(), "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step, "skipped": self.skipped, "config": config_to_dict(self.cfg),
            # a step with state of its own (AutoHAS's controller) keeps it in the checkpoint
            "step": self.step_fn.state_dict() if isinstance(self.step_fn, StatefulStep) else None,
            # train.qat: the activation ranges, which the (plain) model state leaves out
            "qat": self._observer_state() if self.cfg.train.qat else None,
        }

    def _observer_state(self) -> dict[str, dict[str, torch.Tensor]]:
        from effml.train.qat import observer_state

        state = {"model": observer_state(self.model)}
        if self.ema is not None:
            state["ema"] = observer_state(self.ema.module)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` (from ``state_dict``) left off; the RNGs included."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.global_step, self.skipped = state["global_step"], state["skipped"]
        self._batches = None
        if state.get("step") is not None and isinstance(self.step_fn, StatefulStep):
            self.step_fn.load_state_dict(state["step"])
        if self.cfg.train.qat and state.get("qat") is not None:
            from effml.train.qat import load_observer_state

            load_observer_state(self.model, state["qat"]["model"])
            if self.ema is not None and "ema" in state["qat"]:
                load_observer_state(self.ema.module, state["qat"]["ema"])
        set_rng_state(state["rng"])

    def save_checkpoint(self, path: str | Path) -> None:
        """Write ``state_dict()`` atomically to ``path`` (by the main process; all processes wait)."""
        if self.ctx.is_main:
            write_checkpoint(Path(path), self.state_dict())
        distributed.barrier()

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint written by ``save_checkpoint``."""
        self.load_state_dict(read_checkpoint(Path(path)))
