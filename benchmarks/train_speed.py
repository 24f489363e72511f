"""effml's training step vs a plain timm training loop: EfficientNet-B0, batch 32, 128 px, CPU.

Both sides train the same recipe on the same random batch: RMSProp the TF way (effml's
``RMSpropTF`` via ``build_optimizer``; timm's ``RMSpropTF`` via ``create_optimizer_v2``) with
lr 0.016 x batch / 256, decay 0.9, momentum 0.9, eps 1e-3, weight decay 1e-5 off BN and biases;
label-smoothed (0.1) cross-entropy; dropout 0.2 and drop path 0.2; an EMA of weights and BN
statistics with decay 0.9999 (effml's ``create_ema``; timm's ``ModelEmaV3``); a per-step LR
schedule. effml runs its engine's real ``train_step``; timm runs the loop of its ``train.py``.
Each library keeps its own optimizer defaults (timm's RMSpropTF picks its per-tensor path on CPU).

Speed: one process, the same starting weights, one step of each contender per round, in a fresh
random order each round (``effml.measure.latency.time_interleaved``); prints median ms/step and
images/s, the ratio of the medians, and the median of the per-round ratios (each pair ran seconds apart, so it shrugs off load that other
jobs put on a shared machine between rounds). The headline ratio is the median of the pairs.
It also prints process CPU time per step, a measure of work that a busy machine distorts less
(exact with ``--threads 1``; with more threads it includes OpenMP's spin-waiting), and the
optimizer update and EMA update timed alone.

Memory: torch's CPU allocations bypass tracemalloc, so the script re-runs itself once per
contender (``--only effml`` / ``--only timm``), one after the other, and each child reports the
growth of its peak resident set size from just before the model is built to the end of its
training steps: model, EMA copy, optimizer state, activations, gradients and temporaries, as the
operating system saw them. The child resets its peak (``/proc/self/clear_refs``) and reads
``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` would not do, as Linux carries it across
fork and exec, so a child would inherit this parent's peak. Both children import the same
modules (timm and effml alike) and make the same input first, so their baselines match.
Linux only.

Usage: python benchmarks/train_speed.py [--rounds 16 --mem-steps 6 --json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import RMSpropTF as TimmRMSpropTF
from timm.optim import create_optimizer_v2
from timm.scheduler import StepLRScheduler
from timm.utils import ModelEmaV3
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine  # noqa: E402

import effml  # noqa: E402
from effml.measure.latency import time_interleaved  # noqa: E402
from effml.train.config import OptimConfig, ScheduleConfig  # noqa: E402
from effml.train.ema import create_ema  # noqa: E402
from effml.train.engine import train_step  # noqa: E402
from effml.train.objective import Batch, CrossEntropyObjective  # noqa: E402
from effml.train.optim import RMSpropTF, build_optimizer, build_scheduler  # noqa: E402

MODEL = "efficientnet_b0"
NUM_CLASSES = 1000
EMA_DECAY = 0.9999
STEPS_PER_EPOCH = 1000  # only shapes the LR schedule; the benchmark never reaches an epoch


def _lr(batch: int) -> float:
    return 0.016 * batch / 256


def timm_model() -> nn.Module:
    """timm's EfficientNet-B0 with the recipe's dropout and drop path, in train mode."""
    return timm.create_model(MODEL, num_classes=NUM_CLASSES, drop_rate=0.2, drop_path_rate=0.2).train()


def effml_model() -> nn.Module:
    """effml's EfficientNet-B0 with the recipe's dropout and drop path, in train mode."""
    return effml.create_model(MODEL, num_classes=NUM_CLASSES, dropout=0.2, drop_path=0.2).train()


@dataclass
class Contender:
    """One training loop: a whole step, and its optimizer update and EMA update alone."""

    step: Callable[[], object]
    optimizer_step: Callable[[], object]
    ema_update: Callable[[], object]


def effml_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Contender:
    """effml's engine step (``train_step``) on ``(x, y)``, and its parts."""
    optimizer = build_optimizer(model, OptimConfig(name="rmsprop_tf", lr=_lr(len(x)), momentum=0.9,
                                                   decay=0.9, eps=1e-3, weight_decay=1e-5))
    assert isinstance(optimizer, RMSpropTF)
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="exponential", decay_rate=0.97,
                                                          decay_epochs=2.4), STEPS_PER_EPOCH, 10**9)
    ema = create_ema(model, EMA_DECAY)
    objective = CrossEntropyObjective(label_smoothing=0.1)
    batch = Batch(x, y, torch.arange(len(x)))

    def step() -> object:
        return train_step(model, model, batch, objective, optimizer, scheduler, ema, None)

    return Contender(step, optimizer.step, lambda: ema.update_parameters(model))


def timm_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Contender:
    """One iteration of timm's ``train.py`` loop on ``(x, y)``, and its parts."""
    optimizer = create_optimizer_v2(model, "rmsproptf", lr=_lr(len(x)), weight_decay=1e-5,
                                    momentum=0.9, alpha=0.9, eps=1e-3)
    assert isinstance(optimizer, TimmRMSpropTF)
    scheduler = StepLRScheduler(optimizer, decay_t=int(2.4 * STEPS_PER_EPOCH), decay_rate=0.97,
                                t_in_epochs=False)
    ema = ModelEmaV3(model, decay=EMA_DECAY)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=0.1)
    num_updates = 0

    def step() -> object:
        nonlocal num_updates
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        num_updates += 1
        ema.update(model, step=num_updates)
        scheduler.step_update(num_updates=num_updates)
        return loss

    return Contender(step, optimizer.step, lambda: ema.update(model, step=num_updates))


def paired_ms(contenders: dict[str, Callable[[], object]], rounds: int,
              warmup: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU milliseconds of each call, one call per contender per round, in a fresh
    random order each round (the library's ``time_interleaved``; the CPU time is read around the
    same call)."""
    cpu: dict[str, list[float]] = {name: [] for name in contenders}

    def with_cpu(name: str, fn: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            c = time.process_time()
            out = fn()
            cpu[name].append((time.process_time() - c) * 1e3)
            return out
        return call

    wall = time_interleaved([with_cpu(n, f) for n, f in contenders.items()], warmup=warmup, rounds=rounds)
    return dict(zip(contenders, wall)), {name: c[warmup:] for name, c in cpu.items()}


def _inputs(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 3, size, size, generator=g),
            torch.randint(0, NUM_CLASSES, (batch,), generator=g))


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith(field + ":"))
    return int(kib) / 1024


def _reset_peak_rss() -> None:
    # "5" resets this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_memory(which: str, batch: int, size: int, steps: int) -> dict[str, float]:
    """Peak RSS growth (MiB) of building and training one contender for ``steps`` steps."""
    torch.manual_seed(0)
    x, y = _inputs(batch, size)
    _reset_peak_rss()
    before = _proc_status_mib("VmRSS")
    contender = effml_step(effml_model(), x, y) if which == "effml" else timm_step(timm_model(), x, y)
    for _ in range(steps):
        contender.step()
    peak = _proc_status_mib("VmHWM")
    return {"peak_rss_mib": peak, "baseline_mib": before, "growth_mib": peak - before}


def memory_in_subprocesses(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run ``measure_memory`` for each contender in its own fresh interpreter, one at a time."""
    out = {}
    for which in ("timm", "effml"):
        cmd = [sys.executable, __file__, "--only", which, "--batch", str(args.batch), "--size",
               str(args.size), "--mem-steps", str(args.mem_steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[which] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mem-steps", type=int, default=6, help="steps per memory child")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", choices=("effml", "timm"), default=None,
                    help="internal: measure one contender's memory and print it as JSON")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory children")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(measure_memory(args.only, args.batch, args.size, args.mem_steps)))
        return

    torch.manual_seed(0)
    ref = timm_model()
    ours = effml_model()
    ours.load_state_dict(ref.state_dict())
    x, y = _inputs(args.batch, args.size)
    contenders = {"timm": timm_step(ref, x, y), "effml": effml_step(ours, x, y)}
    samples, cpu_samples = paired_ms({k: c.step for k, c in contenders.items()}, rounds=args.rounds,
                                     warmup=args.warmup)
    ms = {k: statistics.median(v) for k, v in samples.items()}
    cpu_ms = {k: statistics.median(v) for k, v in cpu_samples.items()}
    speed_ratio = statistics.median(t / e for t, e in zip(samples["timm"], samples["effml"]))
    cpu_ratio = statistics.median(t / e for t, e in zip(cpu_samples["timm"], cpu_samples["effml"]))
    # the gradients of the last step stay in place, so the parts can be timed on their own
    parts = {part: {k: statistics.median(v) for k, v in paired_ms(
        {k: getattr(c, part) for k, c in contenders.items()}, rounds=30, warmup=2)[0].items()}
        for part in ("optimizer_step", "ema_update")}

    print(f"machine: {machine()}")
    print(f"\n{MODEL} training step, batch {args.batch}, {args.size}px ({args.rounds} rounds, "
          f"one step of each per round)")
    print(f"  {'contender':10s} {'ms/step':>9s} {'img/s':>8s} {'CPU ms/step':>12s}")
    for k in ("timm", "effml"):
        print(f"  {k:10s} {ms[k]:9.1f} {args.batch * 1e3 / ms[k]:8.1f} {cpu_ms[k]:12.1f}")
    print(f"  ratio speed effml/timm (img/s), median of rounds: {speed_ratio:.3f}  (target >= 1.0)")
    print(f"  ratio speed effml/timm (img/s), of the medians:   {ms['timm'] / ms['effml']:.3f}")
    print(f"  ratio CPU time timm/effml, median of rounds:      {cpu_ratio:.3f}")
    for part, t in parts.items():
        print(f"  of which {part:15s} timm {t['timm']:7.1f} ms  effml {t['effml']:7.1f} ms")
    result = {"machine": machine(), "model": MODEL, "batch": args.batch, "size": args.size,
              "ms_per_step": ms, "cpu_ms_per_step": cpu_ms, "speed_ratio": speed_ratio,
              "cpu_ratio": cpu_ratio, "samples_ms": samples, "parts_ms": parts}
    if not args.no_memory:
        mem = memory_in_subprocesses(args)
        mem_ratio = mem["effml"]["growth_mib"] / mem["timm"]["growth_mib"]
        print(f"\npeak RSS growth over {args.mem_steps} steps (separate processes)")
        print(f"  {'contender':10s} {'growth MiB':>11s} {'peak MiB':>9s}")
        for k in ("timm", "effml"):
            print(f"  {k:10s} {mem[k]['growth_mib']:11.1f} {mem[k]['peak_rss_mib']:9.1f}")
        print(f"  ratio memory effml/timm (growth): {mem_ratio:.3f}  (target <= 1.1)")
        result.update(memory=mem, memory_ratio=mem_ratio)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
