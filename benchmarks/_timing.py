"""Interleaved timing for side-by-side benchmarks: contenders alternate within every round, so
load on a shared machine hits them alike; results are medians over all timed calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_ms(
    contenders: dict[str, Callable[[], object]], *, rounds: int = 5, iters: int = 10, warmup: int = 3
) -> dict[str, float]:
    """Median milliseconds per call of each contender, timed in alternating rounds."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            fn = contenders[name]
            for _ in range(iters):
                t = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def inference_call(model: Callable[[object], object], x: object) -> Callable[[], object]:
    """A zero-argument call of ``model(x)`` under ``torch.inference_mode``, for the timers."""
    import torch

    def call() -> object:
        with torch.inference_mode():
            return model(x)
    return call


def machine() -> str:
    """A one-line description of the CPU and thread settings."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
