"""The one training loop: every recipe (plain, AdvProp, distillation) and every model runs here,
as a loop over a ``Trainer`` (``effml.train.trainer``).

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (a row per log interval and
per epoch), ``checkpoints/last.pt`` (model, optimizer, scheduler, EMA, RNG and the position in
the epoch), and at the end ``model.json``, ``run.json`` and the weights as safetensors. A run
given a spec or a module in-process also keeps ``spec.json``, which its ``config.yaml`` names,
so that ``effml train --resume`` rebuilds it. ``fit(..., write_run=False)`` writes nothing: an
in-process trial of a search.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from effml.errors import EffmlError
from effml.train import distributed
from effml.train.checkpoint import CHECKPOINT_NAME, atomic_write_text, load_checkpoint
from effml.train.config import Config, config_to_yaml
from effml.train.objective import Objective
from effml.train.step import StepFn, TrainingDiverged, train_step
from effml.train.trainer import Trainer, model_spec, preserved_global_state

__all__ = ["EpochHook", "RunResult", "TrainingDiverged", "fit", "model_spec", "train_step"]

# Called after each evaluation with (epochs finished, the epoch's metrics row: val, ema_val,
# holdout, ema_holdout when data.holdout is set, global_step, skipped_images); a true return
# value stops the run there (e.g. a pruner's verdict).
EpochHook = Callable[[int, dict[str, Any]], bool | None]


@dataclass
class RunResult:
    """What a finished run reports."""

    run_dir: Path | None  # None when the run wrote nothing (write_run=False)
    global_step: int
    epochs_done: int
    val: dict[str, float]
    ema_val: dict[str, float] | None
    skipped_images: int
    summary: str = ""  # the final metrics in words ("val top-1 ...", "val AP ...")
    holdout: dict[str, float] | None = None  # on the held-out training images (data.holdout)
    ema_holdout: dict[str, float] | None = None
    stopped: bool = False  # an on_epoch hook ended the run before its last epoch


class _Log:
    """Metrics rows (JSON lines, when there is a run directory) and progress lines, written by
    the main process only."""

    def __init__(self, run_dir: Path | None, is_main: bool, quiet: bool) -> None:
        self.path = run_dir / "metrics.jsonl" if run_dir is not None else None
        self.enabled = is_main and run_dir is not None
        self.quiet = quiet or not is_main

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


def fit(cfg: Config, *, model: Any = None, resume: bool = False, objective: Objective | None = None,
        step: StepFn | None = None, on_epoch: EpochHook | None = None, write_run: bool = True,
        quiet: bool = False) -> RunResult:
    """Train as ``cfg`` says and return the final metrics; with ``resume``, continue the run in
    ``cfg.run.dir`` exactly.

    ``model``: a zoo name, a spec JSON path, a spec or a module built from one (default
    ``cfg.model.name``); ``step`` replaces the optimizer step (``effml.train.step``);
    ``on_epoch`` sees each evaluation and may stop the run (``EpochHook``); ``write_run=False``
    trains in memory without a run directory. The global RNGs, thread count and
    deterministic-algorithm flags are as before when ``fit`` returns.
    """
    if resume and not write_run:
        raise EffmlError("resume continues a run directory; it cannot be combined with write_run=False")
    with preserved_global_state():
        ctx = distributed.setup(cfg.train.device)
        try:
            return _fit(cfg, ctx, model, resume, objective, step, on_epoch, write_run, quiet)
        finally:
            distributed.teardown()


def _fit(cfg: Config, ctx: distributed.DistContext, model: Any, resume: bool, objective: Objective | None,
         step: StepFn | None, on_epoch: EpochHook | None, write_run: bool, quiet: bool) -> RunResult:
    run_dir = Path(cfg.run.dir) if write_run else None
    ckpt_path = run_dir / "checkpoints" / CHECKPOINT_NAME if run_dir is not None else None
    state = load_checkpoint(ckpt_path) if resume else None
    if ckpt_path is not None and not resume and ckpt_path.exists():
        raise EffmlError(f"{run_dir} already holds a run; continue it with `effml train --resume "
                         f"{run_dir}` or choose another run.dir")
    t = Trainer(cfg, model=model, objective=objective, step=step, ctx=ctx)
    spec_file = None
    if run_dir is not None and model is not None and not isinstance(model, str):
        spec_file = run_dir / "spec.json"
        t.cfg = dataclasses.replace(t.cfg, model=dataclasses.replace(t.cfg.model, name=str(spec_file)))
    cfg = t.cfg
    log = _Log(run_dir, ctx.is_main, quiet)
    if ctx.is_main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if spec_file is not None:
            atomic_write_text(spec_file, t.task.spec_json(t.spec))
        atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
        for stale in ckpt_path.parent.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # a write a crash cut short
            stale.unlink()
    if state is not None:
        t.load_state_dict(state)
        log.truncate_after(t.global_step)
        log.say(f"resumed {run_dir} at epoch {t.epoch + 1}, step {t.batch_in_epoch} "
                f"(global step {t.global_step})")

    def checkpoint() -> None:
        if ckpt_path is not None:
            t.save_checkpoint(ckpt_path)

    log.say(f"training {t.model_name} ({t.num_parameters / 1e6:.2f}M params) on {len(t.bundle.train)} "
            f"images, {t.num_classes} classes, {ctx.world} process(es), {t.steps_per_epoch} steps/epoch, "
            f"{t.total_steps} steps")
    val: dict[str, float] = {}
    ema_val: dict[str, float] | None = None
    holdout: dict[str, float] | None = None
    ema_holdout: dict[str, float] | None = None
    stopped = False
    start = time.perf_counter()
    steps_this_session = 0
    train = cfg.train
    while not t.finished:
        loss_sum, loss_n, t_interval, images_interval = torch.zeros(()), 0, time.perf_counter(), 0
        try:
            for out in t.epoch_steps():
                steps_this_session += 1
                loss_sum += out.loss.detach().float().cpu()
                loss_n += 1
                images_interval += t.last_batch_size * ctx.world
                if t.global_step % train.log_interval == 0 or t.batch_in_epoch == t.steps_per_epoch:
                    elapsed = time.perf_counter() - t_interval
                    ips = images_interval / max(elapsed, 1e-9)
                    loss_avg = (loss_sum / max(loss_n, 1)).item()
                    left = (t.total_steps - t.global_step) * (time.perf_counter() - start) / steps_this_session
                    log.row(kind="step", epoch=t.epoch + 1, step=t.batch_in_epoch, global_step=t.global_step,
                            loss=loss_avg, lr=t.lr, images_per_s=ips,
                            **{k: float(v) for k, v in out.parts.items()})
                    log.say(f"epoch {t.epoch + 1}/{train.epochs} step {t.batch_in_epoch}/{t.steps_per_epoch} "
                            f"loss {loss_avg:.4f} lr {t.lr:.5f} {ips:.1f} img/s "
                            f"eta {time.strftime('%H:%M:%S', time.gmtime(left))}")
                    loss_sum, loss_n, t_interval, images_interval = torch.zeros(()), 0, time.perf_counter(), 0
                interval = train.checkpoint_interval
                if (interval and t.global_step % interval == 0 and t.batch_in_epoch < t.steps_per_epoch
                        and not t.finished):
                    checkpoint()
        except TrainingDiverged as e:
            kept = (f"the last good checkpoint {ckpt_path if ckpt_path.exists() else '(none yet)'} is kept"
                    if ckpt_path is not None else "nothing was written (write_run=False)")
            raise TrainingDiverged(f"{e}; training stopped and {kept}. Lower optim.lr, set "
                                   f"optim.grad_clip, or check the data") from None
        epoch_finished = t.end_epoch()
        last = t.finished
        if last or (epoch_finished and t.epoch % train.eval_every == 0):
            val = t.evaluate("val")
            ema_val = t.evaluate("val", ema=True) if t.ema else None
            row: dict[str, Any] = dict(epoch=t.epoch, global_step=t.global_step, val=val, ema_val=ema_val,
                                       skipped_images=t.skipped)
            if t.bundle.holdout is not None:
                holdout = t.evaluate("holdout")
                ema_holdout = t.evaluate("holdout", ema=True) if t.ema else None
                row.update(holdout=holdout, ema_holdout=ema_holdout)
            log.row(kind="epoch", **row)
            ema_text = f"; EMA {t.task.describe(ema_val)}" if ema_val else ""
            held_text = f"; holdout {t.task.describe(holdout)}" if holdout else ""
            log.say(f"epoch {t.epoch}: val {t.task.describe(val)}{ema_text}{held_text}"
                    + (f" ({t.skipped} unreadable images skipped)" if t.skipped else ""))
            stopped = bool(on_epoch is not None and on_epoch(t.epoch, row)) and not last
        checkpoint()
        if stopped:
            log.row(kind="stopped", epoch=t.epoch, global_step=t.global_step)
            log.say(f"stopped by the epoch hook after epoch {t.epoch}")
            break

    agree = distributed.ranks_agree(t.model)
    if ctx.is_main and run_dir is not None:
        _write_outputs(run_dir, t, val, ema_val, holdout, ema_holdout, stopped, ctx.world, agree)
    distributed.barrier()
    if not agree:
        raise EffmlError("the DDP processes ended with different weights; report this as a bug")
    summary = (f"val {t.task.describe(val)}" if val else "not evaluated") + \
        (f"; EMA {t.task.describe(ema_val)}" if ema_val else "") + \
        (f"; holdout {t.task.describe(holdout)}" if holdout else "") + ("; stopped early" if stopped else "")
    return RunResult(run_dir, t.global_step, t.epoch, val, ema_val, t.skipped, summary, holdout,
                     ema_holdout, stopped)


def _write_outputs(run_dir: Path, t: Trainer, val: dict, ema_val: dict | None, holdout: dict | None,
                   ema_holdout: dict | None, stopped: bool, world: int, ranks_agree: bool) -> None:
    from effml.models.weights import save_weights

    cfg, ema, preprocess = t.cfg, t.ema, t.preprocess

    def plain(state: dict) -> dict:
        if cfg.advprop.enabled:  # evaluation and export use the main BatchNorms only
            from effml.layers.aux_bn import strip_aux_bn

            return strip_aux_bn(state)
        return state

    save_weights(plain(t.model.state_dict()), run_dir / "weights.safetensors")
    if ema is not None:
        save_weights(plain(ema.module.state_dict()), run_dir / "weights_ema.safetensors")
    atomic_write_text(run_dir / "model.json", t.task.spec_json(t.spec))
    info = {
        "task": t.task.name, **t.task.run_info(t.bundle.train),
        "model": cfg.model.name, "classes": list(t.bundle.classes), "global_step": t.global_step,
        "input_size": cfg.data.image_size, "mean": list(preprocess.mean), "std": list(preprocess.std),
        "crop_pct": preprocess.crop_pct if cfg.data.dataset == "folder" else 1.0,
        "val": val, "ema_val": ema_val, "processes": world, "ranks_agree": ranks_agree,
        "weights": "weights_ema.safetensors" if ema is not None else "weights.safetensors",
        "stopped": stopped,
    }
    if holdout is not None:
        info.update(holdout=holdout, ema_holdout=ema_holdout)
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2))
