"""The one training loop: every recipe (plain, AdvProp, distillation) and every model runs here,
as a loop over a ``Trainer`` (``effml.train.trainer``).

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (a row per log interval and
per epoch), ``checkpoints/last.pt`` (model, optimizer, scheduler, EMA, RNG and the position in
the epoch) with ``checkpoints/model.json`` (the spec the checkpoint's weights belong to), and at
the end ``model.json``, ``run.json`` and the weights as safetensors. A run given a spec or a
module in-process also keeps ``spec.json``, which its ``config.yaml`` names, so that
``effml train --resume`` rebuilds it. ``fit(..., write_run=False)`` writes nothing: an in-process
trial of a search.

One process trains into a run directory at a time (an OS lock on ``RUN/.lock``, by rank 0 under
DDP). A fresh run never reuses a directory that holds a checkpoint or a finished run. A resume
is checked before any file is touched: a config change to what the checkpoint depends on is
refused (``effml.train.run_dir.SAFE_RESUME_CHANGES`` lists what may change; the changes made
are recorded as a ``kind: resume`` row in ``metrics.jsonl``). Resuming a run that was killed
after its last checkpoint writes its outputs as an uninterrupted run would have; resuming a
finished run with train.epochs or train.max_steps raised trains it further (its ``run.json`` is
removed until the outputs are written again); resuming a finished run with nothing left to train
is an error, unless its outputs are damaged, which it then rewrites.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import effml.train.distributed as distributed
from effml.errors import EffmlError
from effml.files import atomic_write_text, fsync_dir
from effml.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from effml.train.config import Config, config_from_dict, config_to_yaml
from effml.train.data import eval_preprocess
from effml.train.objective import Objective
from effml.train.run_dir import (
    RUN_INFO,
    WEIGHTS_EMA,
    WEIGHTS_RAW,
    RunDirError,
    RunLock,
    read_metrics,
    read_run_info,
    resume_changes,
    preprocess_fields,
    shipped_weights,
    spec_changes,
    weights_file,
    write_run_info,
)
from effml.train.step import ReportingStep, StepFn, TrainingDiverged, train_step
from effml.train.trainer import Trainer, preserved_global_state

__all__ = ["EpochHook", "RunResult", "TrainingDiverged", "fit", "train_step"]

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
        self.t0 = time.perf_counter()

    def truncate_after(self, global_step: int) -> None:
        """Drop rows written after the checkpoint a run resumes from (and a half-written last row)."""
        if not (self.enabled and self.path.exists()):
            return
        keep = [line for line, row in read_metrics(self.path) if row.get("global_step", 0) <= global_step]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    def start(self) -> None:
        """A fresh run: rows of an earlier attempt that never reached a checkpoint are dropped."""
        if self.enabled and self.path.exists():
            atomic_write_text(self.path, "")

    def row(self, **fields: Any) -> None:
        """One metrics row; ``session_s``: wall seconds since this process started the run (or resumed it)."""
        if self.enabled:
            fields["session_s"] = round(time.perf_counter() - self.t0, 1)
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
        lock = RunLock(cfg.run.dir) if write_run and ctx.is_main else None
        try:
            if lock is not None:
                if resume and not Path(cfg.run.dir).is_dir():
                    raise RunDirError(f"cannot resume {cfg.run.dir}: no such run directory")
                lock.acquire()
            return _fit(cfg, ctx, model, resume, objective, step, on_epoch, write_run, quiet)
        finally:
            if lock is not None:
                lock.release()
            distributed.teardown()


_STATE_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "batch_in_epoch", "global_step", "skipped")


def _check_fresh(run_dir: Path, ckpt_path: Path) -> None:
    """A fresh run never writes into a directory that holds a checkpoint or a finished run."""
    if (run_dir / RUN_INFO).exists():
        if ckpt_path.exists():
            raise EffmlError(f"{run_dir} already holds a run, finished ({RUN_INFO}); choose another run.dir, "
                             f"or train it further with `effml train --resume {run_dir} train.epochs=N` "
                             f"(N more than it has trained)")
        raise EffmlError(f"{run_dir} already holds a run, finished ({RUN_INFO}, its checkpoints removed); "
                         f"choose another run.dir (to start from its weights: "
                         f"model.weights={run_dir / 'weights.safetensors'})")
    if ckpt_path.exists():
        raise EffmlError(f"{run_dir} already holds a run; continue it with `effml train --resume "
                         f"{run_dir}` or choose another run.dir")


def _read_state(run_dir: Path, ckpt_path: Path) -> dict[str, Any]:
    """The checkpoint a resume continues from, checked to be a whole effml training state."""
    if not ckpt_path.is_file() and (run_dir / RUN_INFO).is_file():
        raise CheckpointError(f"cannot resume {run_dir}: it is a finished run whose checkpoints were removed "
                              f"(no {ckpt_path}), so it cannot be trained further; train a new run.dir "
                              f"(to start from its weights: model.weights={run_dir / 'weights.safetensors'})")
    state = load_checkpoint(ckpt_path)
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{ckpt_path} is not an effml training checkpoint (it lacks {missing}); "
                              f"restore it from a copy of the run, or train a new run.dir")
    return state


def _check_batch_norm_batch(t: Trainer) -> None:
    """BatchNorm in training mode needs two images or more per batch (of one value per channel it
    cannot take a variance): refused before the first step rather than as torch's error at it."""
    from torch import nn

    frozen = t.cfg.model.freeze_bn is True
    if t.cfg.data.batch_size < 2 and not frozen and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in t.model.modules()):
        raise EffmlError(f"data.batch_size={t.cfg.data.batch_size}: {t.model_name} has BatchNorm layers, which "
                         f"need at least 2 images per training batch; set data.batch_size=2 or more "
                         f"(or model.freeze_bn=true to keep every BatchNorm's statistics fixed)")


def _outputs_complete(run_dir: Path) -> bool:
    """True when a finished run's run.json, model.json and weights are all there and readable."""
    try:
        info = read_run_info(run_dir)
        json.loads((run_dir / "model.json").read_text())
    except (EffmlError, OSError, ValueError):
        return False
    return weights_file(run_dir, info).is_file() and weights_file(run_dir, info, "raw").is_file()


def _longer(t: Trainer) -> str:
    """The overrides that let a finished run train one more epoch."""
    train = t.cfg.train
    raised = []
    if t.epoch >= train.epochs:
        raised.append(f"train.epochs={t.epoch + 1}")
    if train.max_steps and t.global_step >= train.max_steps:
        raised.append(f"train.max_steps={t.global_step + t.steps_per_epoch}")
    return " ".join(raised) or f"train.epochs={train.epochs + 1}"


def _final_row(rows: list[tuple[str, dict[str, Any]]], global_step: int) -> dict[str, Any] | None:
    """The evaluation row a run logged at ``global_step`` (its last, before the kill)."""
    found = [row for _, row in rows if row.get("kind") == "epoch" and row.get("global_step") == global_step]
    return found[-1] if found else None


def _fit(cfg: Config, ctx: distributed.DistContext, model: Any, resume: bool, objective: Objective | None,
         step: StepFn | None, on_epoch: EpochHook | None, write_run: bool, quiet: bool) -> RunResult:
    run_dir = Path(cfg.run.dir) if write_run else None
    ckpt_path = run_dir / "checkpoints" / CHECKPOINT_NAME if run_dir is not None else None
    spec_file = None
    if run_dir is not None and model is not None and not isinstance(model, str):
        spec_file = run_dir / "spec.json"
    # The config as the run will record it, checked against the checkpoint's before any work.
    name = str(spec_file) if spec_file is not None else model if isinstance(model, str) else None
    recorded_cfg = config_from_dict({"model": {"name": name}}, cfg) if name is not None else cfg
    state = changes = None
    if resume:
        state = _read_state(run_dir, ckpt_path)
        changes = resume_changes(run_dir, state.get("config"), recorded_cfg)
    elif run_dir is not None:
        _check_fresh(run_dir, ckpt_path)
    t = Trainer(cfg, model=model, objective=objective, step=step, ctx=ctx)
    _check_batch_norm_batch(t)
    if spec_file is not None:
        t.cfg = config_from_dict({"model": {"name": str(spec_file)}}, t.cfg)
    cfg = t.cfg
    spec_json = t.task.spec_json(t.spec) if run_dir is not None else ""
    spec_record = run_dir / "checkpoints" / "model.json" if run_dir is not None else None
    final_row = None
    continuing_finished = False
    if state is not None:
        for record in (spec_record, spec_file):
            if record is not None and record.is_file():
                spec_changes(run_dir, record.read_text(), spec_json)
                break
        try:
            t.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{ckpt_path} does not fit the model and optimizer built from the config "
                                  f"({first[:300]}); resume with the config it was trained with, or train "
                                  f"a new run.dir") from None
        rows = read_metrics(run_dir / "metrics.jsonl")  # a damaged row stops the resume here, not later
        finished_run = (run_dir / RUN_INFO).exists()
        if t.finished:
            if finished_run and _outputs_complete(run_dir):
                raise EffmlError(f"{run_dir} is already finished ({t.global_step} steps, {t.epoch} epochs) and "
                                 f"its outputs are whole; to train it further raise what ended it: "
                                 f"`effml train --resume {run_dir} {_longer(t)}`")
            final_row = _final_row(rows, t.global_step)  # killed before its outputs were written
        else:
            continuing_finished = finished_run
    distributed.barrier()  # every process has checked the run before rank 0 writes to it

    log = _Log(run_dir, ctx.is_main, quiet)
    if ctx.is_main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if continuing_finished:  # the directory reads as unfinished until the new outputs are whole
            (run_dir / RUN_INFO).unlink()
            fsync_dir(run_dir)
        if spec_file is not None and (state is None or not spec_file.is_file()):
            atomic_write_text(spec_file, spec_json)
        if state is None or not spec_record.is_file():
            atomic_write_text(spec_record, spec_json)
        atomic_write_text(run_dir / "config.yaml", config_to_yaml(cfg))
        for stale in ckpt_path.parent.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # a write a crash cut short
            stale.unlink()
        if state is None:
            log.start()
    if state is not None:
        log.truncate_after(t.global_step)
        log.row(kind="resume", epoch=t.epoch, step=t.batch_in_epoch, global_step=t.global_step,
                changes={k: list(v) for k, v in (changes or {}).items()})
        log.say(f"resumed {run_dir} at epoch {t.epoch + 1}, step {t.batch_in_epoch} "
                f"(global step {t.global_step})" + (f"; changed {', '.join(changes)}" if changes else ""))

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
    if t.finished and final_row is not None:
        val, ema_val = final_row.get("val") or {}, final_row.get("ema_val")
        holdout, ema_holdout = final_row.get("holdout"), final_row.get("ema_holdout")
    elif t.finished and state is not None:  # its last evaluation was never logged: do it now
        row = _evaluate(t, log)
        val, ema_val, holdout, ema_holdout = row["val"], row["ema_val"], row.get("holdout"), row.get("ema_holdout")
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
                    # a step with its own progress (AutoHAS: the controller's reward, entropy) adds it
                    extra = t.step_fn.progress() + " " if isinstance(t.step_fn, ReportingStep) else ""
                    log.say(f"epoch {t.epoch + 1}/{train.epochs} step {t.batch_in_epoch}/{t.steps_per_epoch} "
                            f"loss {loss_avg:.4f} lr {t.lr:.5f} {extra}{ips:.1f} img/s "
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
            row = _evaluate(t, log)
            val, ema_val, holdout, ema_holdout = (row["val"], row["ema_val"], row.get("holdout"),
                                                  row.get("ema_holdout"))
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


def _evaluate(t: Trainer, log: _Log) -> dict[str, Any]:
    """Evaluate on val (and the holdout), log the epoch row and return it; with
    ``train.bn_recalibrate``, the BatchNorm statistics are re-estimated first."""
    if t.cfg.train.bn_recalibrate:
        t.recalibrate_bn(t.cfg.train.bn_recalibrate)
    val = t.evaluate("val")
    ema_val = t.evaluate("val", ema=True) if t.ema else None
    # a run stopped inside an epoch (train.max_steps) is labelled with that epoch and its step in it
    partial = t.batch_in_epoch > 0
    epoch = t.epoch + 1 if partial else t.epoch
    row: dict[str, Any] = dict(epoch=epoch, global_step=t.global_step, val=val, ema_val=ema_val,
                               skipped_images=t.skipped)
    if partial:
        row["epoch_step"] = t.batch_in_epoch
    if t.bundle.holdout is not None:
        holdout = t.evaluate("holdout")
        ema_holdout = t.evaluate("holdout", ema=True) if t.ema else None
        row.update(holdout=holdout, ema_holdout=ema_holdout)
    else:
        holdout = None
    log.row(kind="epoch", **row)
    ema_text = f"; EMA {t.task.describe(ema_val)}" if ema_val else ""
    held_text = f"; holdout {t.task.describe(holdout)}" if holdout else ""
    where = f" (stopped at step {t.batch_in_epoch}/{t.steps_per_epoch})" if partial else ""
    log.say(f"epoch {epoch}{where}: val {t.task.describe(val)}{ema_text}{held_text}"
            + (f" ({t.skipped} unreadable images skipped)" if t.skipped else ""))
    return row


def _write_outputs(run_dir: Path, t: Trainer, val: dict, ema_val: dict | None, holdout: dict | None,
                   ema_holdout: dict | None, stopped: bool, world: int, ranks_agree: bool) -> None:
    from effml.models.weights import save_weights

    cfg, ema, preprocess = t.cfg, t.ema, eval_preprocess(t.cfg, t.preprocess)

    def plain(state: dict) -> dict:
        if cfg.advprop.enabled:  # evaluation and export use the main BatchNorms only
            from effml.layers.aux_bn import strip_aux_bn

            return strip_aux_bn(state)
        return state

    save_weights(plain(t.model.state_dict()), run_dir / WEIGHTS_RAW)
    if ema is not None:
        save_weights(plain(ema.module.state_dict()), run_dir / WEIGHTS_EMA)
    atomic_write_text(run_dir / "model.json", t.task.spec_json(t.spec))
    info = {
        "task": t.task.name, **t.task.run_info(t.bundle.train),
        "model": cfg.model.name, "classes": list(t.bundle.classes), "global_step": t.global_step,
        **preprocess_fields(preprocess),
        "val": val, "ema_val": ema_val, "processes": world, "ranks_agree": ranks_agree,
        "weights": shipped_weights(ema is not None),
        "stopped": stopped,
    }
    if holdout is not None:
        info.update(holdout=holdout, ema_holdout=ema_holdout)
    write_run_info(run_dir, **info)
