"""The one training loop: every recipe (plain, AdvProp, distillation) and every model runs here.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (a row per log interval and
per epoch), ``checkpoints/last.pt`` (model, optimizer, scheduler, EMA, RNG and the position in
the epoch), and at the end ``model.json``, ``run.json`` and the weights as safetensors.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.optim.swa_utils import AveragedModel

from effml.errors import EffmlError
from effml.spec.entry import Preprocess
from effml.zoo import get_entry, load_spec, resolve_spec
from effml.train import distributed
from effml.train.checkpoint import (
    CHECKPOINT_NAME, atomic_write_text, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from effml.train.config import Config, config_to_dict, config_to_yaml
from effml.train.data import DataBundle, build_datasets, epoch_indices, eval_loader, train_loader
from effml.train.ema import create_ema
from effml.train.objective import Batch, Objective, StepOutput
from effml.train.optim import build_optimizer, build_scheduler
from effml.train.tasks import task_for


class TrainingDiverged(EffmlError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path
    global_step: int
    epochs_done: int
    val: dict[str, float]
    ema_val: dict[str, float] | None
    skipped_images: int
    summary: str = ""  # the final metrics in words ("val top-1 ...", "val AP ...")


def model_spec(cfg: Config, num_classes: int) -> tuple[Any, Preprocess]:
    """The network spec to train (a zoo name or a spec JSON file) and its input normalisation."""
    m = cfg.model
    if m.name.endswith(".json"):
        spec = load_spec(m.name)
        preprocess = Preprocess(cfg.data.image_size, 0.875)
    else:
        spec, preprocess = get_entry(m.name).spec(), get_entry(m.name).preprocess
    spec = resolve_spec(spec, num_classes=num_classes, dropout=m.dropout, drop_path=m.drop_path,
                        bn_momentum=m.bn_momentum, bn_eps=m.bn_eps, resolution=cfg.data.image_size)
    return spec, preprocess


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class _Log:
    """Metrics rows (JSON lines) and progress lines, written by the main process only."""

    def __init__(self, run_dir: Path, enabled: bool, quiet: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.quiet = quiet or not enabled

    def truncate_after(self, global_step: int) -> None:
        """Drop rows written after the checkpoint a run resumes from."""
        if not (self.enabled and self.path.exists()):
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("global_step", 0) <= global_step]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    def row(self, **fields: Any) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(fields) + "\n")

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


def train_step(net: nn.Module, model: nn.Module, batch: Batch, objective: Objective,
               optimizer: Optimizer, scheduler: LRScheduler, ema: AveragedModel | None,
               grad_clip: float | None, *, amp: bool = False) -> StepOutput:
    """One optimizer step of ``net`` (``model`` unwrapped) on ``batch``; raises ``TrainingDiverged``
    before the backward pass if the loss is not finite."""
    device_type = batch.images.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16 if device_type == "cpu" else torch.float16,
                        enabled=amp):
        out = objective(net, batch)
    if not torch.isfinite(out.loss):
        raise TrainingDiverged(f"the loss became {out.loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    if ema is not None:
        ema.update_parameters(model)
    return out


def fit(cfg: Config, *, resume: bool = False, objective: Objective | None = None,
        quiet: bool = False) -> RunResult:
    """Train as ``cfg`` says; with ``resume``, continue the run in ``cfg.run.dir`` exactly."""
    ctx = distributed.setup(cfg.train.device)
    threads = torch.get_num_threads()
    try:
        return _fit(cfg, ctx, resume, objective, quiet)
    finally:
        torch.set_num_threads(threads)
        distributed.teardown()


def _fit(cfg: Config, ctx: distributed.DistContext, resume: bool, objective: Objective | None,
         quiet: bool) -> RunResult:
    run_dir = Path(cfg.run.dir)
    ckpt_path = run_dir / "checkpoints" / CHECKPOINT_NAME
    state = load_checkpoint(ckpt_path) if resume else None
    if not resume and ckpt_path.exists():
        raise EffmlError(f"{run_dir} already holds a run; continue it with `effml train --resume "
                         f"{run_dir}` or choose another run.dir")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.train.seed)
    log = _Log(run_dir, ctx.is_main, quiet)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
        for stale in ckpt_path.parent.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # a write a crash cut short
            stale.unlink()

    # -- data and model --------------------------------------------------------------------
    bundle = build_datasets(cfg, model_spec(cfg, 1)[1])
    num_classes = cfg.model.num_classes or len(bundle.classes)
    spec, preprocess = model_spec(cfg, num_classes)
    task = task_for(spec)
    model = task.build_model(spec)
    if cfg.model.weights:
        from effml.models.weights import load_weights

        load_weights(model, cfg.model.weights, drop_classifier=cfg.model.drop_classifier)
    if cfg.advprop.enabled:
        from effml.layers.aux_bn import convert_to_advprop

        model = convert_to_advprop(model)
    model = model.to(ctx.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = create_ema(model, cfg.train.ema_decay) if cfg.train.ema_decay else None
    net = distributed.wrap(model, ctx, cfg.train.sync_bn)
    optimizer = build_optimizer(model, cfg.optim)
    bs = cfg.data.batch_size
    steps_per_epoch = len(epoch_indices(bundle.train, 0, cfg.train.seed, ctx.rank, ctx.world)) // bs
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    scheduler = build_scheduler(optimizer, cfg.schedule, steps_per_epoch, total_steps)
    objective = objective or task.objective(cfg, net, spec, preprocess, len(bundle.train), ctx.device)
    mixer = task.mixer(cfg, num_classes)
    val_batches = eval_loader(bundle.val, cfg.data.eval_batch_size or bs, cfg.data.workers,
                              ctx.rank, ctx.world)

    epoch, batch_in_epoch, global_step, skipped = 0, 0, 0, 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        epoch, batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        global_step, skipped = state["global_step"], state["skipped"]
        log.truncate_after(global_step)
        set_rng_state(state["rng"])
        log.say(f"resumed {run_dir} at epoch {epoch + 1}, step {batch_in_epoch} (global step {global_step})")

    def checkpoint(ep: int, batch: int) -> None:
        if ctx.is_main:
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema else None,
                "rng": rng_state(), "epoch": ep, "batch_in_epoch": batch, "global_step": global_step,
                "skipped": skipped, "config": config_to_dict(cfg),
            })
        distributed.barrier()

    log.say(f"training {cfg.model.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) "
            f"on {len(bundle.train)} images, {num_classes} classes, {ctx.world} process(es), "
            f"{steps_per_epoch} steps/epoch, {total_steps} steps")
    val: dict[str, float] = {}
    ema_val: dict[str, float] | None = None
    start = time.perf_counter()
    steps_this_session = 0
    done = global_step >= total_steps
    while epoch < cfg.train.epochs and not done:
        bundle.train.set_epoch(epoch)
        indices = epoch_indices(bundle.train, epoch, cfg.train.seed, ctx.rank, ctx.world)
        loader = train_loader(bundle.train, indices[batch_in_epoch * bs:], bs, cfg.data.workers)
        _set_train_mode(net, cfg.model.freeze_bn)
        loss_sum, loss_n, t_interval, images_interval = torch.zeros(()), 0, time.perf_counter(), 0
        for images, targets, idx, n_skipped in loader:
            skipped += n_skipped
            if len(images) == 0:
                continue
            images = images.to(ctx.device, non_blocking=True)
            targets = task.targets_to(targets, ctx.device)
            if cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if mixer is not None:
                images, targets = mixer(images, targets)
            try:
                out = train_step(net, model, Batch(images, targets, idx), objective, optimizer,
                                 scheduler, ema, cfg.optim.grad_clip, amp=cfg.train.amp)
            except TrainingDiverged as e:
                raise TrainingDiverged(
                    f"{e} at epoch {epoch + 1}, step {batch_in_epoch + 1} "
                    f"(global step {global_step + 1}); training stopped and the last good checkpoint "
                    f"{ckpt_path if ckpt_path.exists() else '(none yet)'} is kept. Lower optim.lr, set "
                    f"optim.grad_clip, or check the data") from None
            global_step += 1
            batch_in_epoch += 1
            steps_this_session += 1
            loss_sum += out.loss.detach().float().cpu()
            loss_n += 1
            images_interval += len(images) * ctx.world
            if global_step % cfg.train.log_interval == 0 or batch_in_epoch == steps_per_epoch:
                elapsed = time.perf_counter() - t_interval
                ips = images_interval / max(elapsed, 1e-9)
                loss_avg = (loss_sum / max(loss_n, 1)).item()
                left = (total_steps - global_step) * (time.perf_counter() - start) / steps_this_session
                log.row(kind="step", epoch=epoch + 1, step=batch_in_epoch, global_step=global_step,
                        loss=loss_avg, lr=scheduler.get_last_lr()[0], images_per_s=ips,
                        **{k: float(v) for k, v in out.parts.items()})
                log.say(f"epoch {epoch + 1}/{cfg.train.epochs} step {batch_in_epoch}/{steps_per_epoch} "
                        f"loss {loss_avg:.4f} lr {scheduler.get_last_lr()[0]:.5f} {ips:.1f} img/s "
                        f"eta {time.strftime('%H:%M:%S', time.gmtime(left))}")
                loss_sum, loss_n, t_interval, images_interval = torch.zeros(()), 0, time.perf_counter(), 0
            done = global_step >= total_steps
            interval = cfg.train.checkpoint_interval
            if interval and global_step % interval == 0 and batch_in_epoch < steps_per_epoch and not done:
                checkpoint(epoch, batch_in_epoch)
            if done:
                break
        epoch_finished = batch_in_epoch >= steps_per_epoch
        if epoch_finished:
            epoch, batch_in_epoch = epoch + 1, 0
        last = done or epoch >= cfg.train.epochs
        if last or (epoch_finished and epoch % cfg.train.eval_every == 0):
            val = task.evaluate(cfg, net, val_batches, ctx.device, bundle.val)
            ema_val = task.evaluate(cfg, ema.module, val_batches, ctx.device, bundle.val) if ema else None
            log.row(kind="epoch", epoch=epoch, global_step=global_step, val=val, ema_val=ema_val,
                    skipped_images=skipped)
            ema_text = f"; EMA {task.describe(ema_val)}" if ema_val else ""
            log.say(f"epoch {epoch}: val {task.describe(val)}{ema_text}"
                    + (f" ({skipped} unreadable images skipped)" if skipped else ""))
        checkpoint(epoch, batch_in_epoch)

    agree = distributed.ranks_agree(model)
    if ctx.is_main:
        _write_outputs(run_dir, cfg, task, model, ema, spec, preprocess, bundle, val, ema_val,
                       global_step, ctx.world, agree)
    distributed.barrier()
    if not agree:
        raise EffmlError("the DDP processes ended with different weights; report this as a bug")
    summary = (f"val {task.describe(val)}" if val else "not evaluated") + \
        (f"; EMA {task.describe(ema_val)}" if ema_val else "")
    return RunResult(run_dir, global_step, epoch, val, ema_val, skipped, summary)


def _write_outputs(run_dir: Path, cfg: Config, task: Any, model: nn.Module, ema: Any, spec: Any,
                   preprocess: Preprocess, bundle: DataBundle, val: dict, ema_val: dict | None,
                   global_step: int, world: int, ranks_agree: bool) -> None:
    from effml.models.weights import save_weights

    def plain(state: dict) -> dict:
        if cfg.advprop.enabled:  # evaluation and export use the main BatchNorms only
            from effml.layers.aux_bn import strip_aux_bn

            return strip_aux_bn(state)
        return state

    save_weights(plain(model.state_dict()), run_dir / "weights.safetensors")
    if ema is not None:
        save_weights(plain(ema.module.state_dict()), run_dir / "weights_ema.safetensors")
    atomic_write_text(run_dir / "model.json", task.spec_json(spec))
    info = {
        "task": task.name, **task.run_info(bundle.train),
        "model": cfg.model.name, "classes": list(bundle.classes), "global_step": global_step,
        "input_size": cfg.data.image_size, "mean": list(preprocess.mean), "std": list(preprocess.std),
        "crop_pct": preprocess.crop_pct if cfg.data.dataset == "folder" else 1.0,
        "val": val, "ema_val": ema_val, "processes": world, "ranks_agree": ranks_agree,
        "weights": "weights_ema.safetensors" if ema is not None else "weights.safetensors",
    }
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2))
