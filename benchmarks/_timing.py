"""What the side-by-side benchmarks share: the library's interleaved timer (``effml.measure.latency.
time_interleaved``: contenders visited in a fresh random order every round, so load on a shared
machine hits them alike) by contender name, a call under inference mode, and the machine's line."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from effml.measure.latency import machine_fingerprint, time_interleaved


def interleaved_ms(
    contenders: dict[str, Callable[[], object]], *, rounds: int = 5, iters: int = 10, warmup: int = 3
) -> dict[str, float]:
    """Median milliseconds per call of each contender: ``rounds`` interleaved rounds of ``iters``
    calls each."""
    samples = time_interleaved(list(contenders.values()), warmup=warmup, rounds=rounds, calls=iters)
    return {name: statistics.median(s) for name, s in zip(contenders, samples)}


def inference_call(model: Callable[[object], object], x: object) -> Callable[[], object]:
    """A zero-argument call of ``model(x)`` under ``torch.inference_mode``, for the timers."""
    import torch

    def call() -> object:
        with torch.inference_mode():
            return model(x)
    return call


def machine() -> str:
    """A one-line description of the CPU and thread settings."""
    import torch

    m = machine_fingerprint()
    return f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {torch.get_num_threads()} threads"
