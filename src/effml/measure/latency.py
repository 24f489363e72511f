"""Latency measured on this machine: the timing primitives, the thread setting, one model's latency.

MnasNet (arXiv 1807.11626, Sec. 3 and 5) optimises the latency measured on the target device
rather than a proxy such as FLOPs; this module is that measurement for the user's CPU, of the model
that will ship: eager PyTorch, ONNX Runtime fp32 (``onnxruntime``), ONNX Runtime int8 (``int8``:
the QDQ graph ``effml export --int8`` writes, ``effml.measure.int8``, calibrated on random input,
which changes its values but not its kernels) or OpenVINO fp32 (``openvino``, an optional extra).
``effml.deploy.benchmark`` times with the same primitives, and the latency tables
(``effml.measure.latency_table``) time each layer with them, so all three agree on what "ms" means.

With one thread the default clock is the calling thread's CPU time, not the wall clock: all the work
runs on that thread, so on an idle core the two agree, while on a shared machine the wall clock also
counts the turns other processes take on the core (measured here: 2x the CPU time under load).
"""

from __future__ import annotations

import contextlib
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from effml.errors import InputError
from effml.measure.onnx import INPUT_NAME, onnx_program, onnx_session

Runtime = Literal["eager", "onnxruntime", "int8", "openvino"]
RUNTIMES: tuple[str, ...] = ("eager", "onnxruntime", "int8", "openvino")
# the library whose version a runtime's latency depends on (a key of ``machine_fingerprint``)
LIBRARY = {"eager": "torch", "onnxruntime": "onnxruntime", "int8": "onnxruntime", "openvino": "openvino"}

# Adaptive repeats: a timing is the median of at least MIN_REPEATS calls lasting MIN_TIME_MS in all,
# so a 50 us layer gets thousands of calls and a 20 ms network a few dozen.
MIN_REPEATS = 20
MIN_TIME_MS = 100.0
MAX_REPEATS = 100_000


def machine_fingerprint() -> dict[str, Any]:
    """The CPU model, logical cores, OS and library versions that a latency depends on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    return {
        "cpu": cpu, "cores": os.cpu_count() or 1, "os": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": _installed("onnxruntime"), "openvino": _installed("openvino"),
    }


def _installed(distribution: str) -> str | None:
    """The installed version of a package (without importing it), None when absent."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Set torch's intra-op threads for a block (``None``: leave them); yields the count in effect."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def time_calls(fn: Callable[[], object], warmup: int, iters: int, *, min_time_ms: float = 0.0,
               max_iters: int = MAX_REPEATS, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Milliseconds of each timed ``fn()`` after ``warmup`` untimed calls: ``iters`` calls, more
    while their total is under ``min_time_ms`` (at most ``max_iters``)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    total = 0.0
    while len(times) < iters or (total < min_time_ms and len(times) < max_iters):
        t = clock()
        fn()
        ms = (clock() - t) * 1e3
        times.append(ms)
        total += ms
    return times


def time_interleaved(fns: Sequence[Callable[[], object]], *, warmup: int, rounds: int,
                     clock: Callable[[], float] = time.perf_counter, seed: int = 0,
                     progress: Callable[[int, int], None] | None = None, calls: int = 1) -> list[list[float]]:
    """Per function, the ms of each of its ``calls`` calls in each of ``rounds`` rounds that visit
    every function once, in a fresh random order each round, after ``warmup`` calls each.

    One call per visit (the default), like one pass of a network: a layer starts with the caches its
    neighbours left, not with its own weights hot. A shared machine's slow spells fall on all
    functions alike, and the shuffle keeps any one from always following the same neighbours. This
    is the one timer of side-by-side comparisons too (``benchmarks/``: several calls per visit).
    """
    for fn in fns:
        time_calls(fn, warmup, 0, clock=clock)
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    rng = random.Random(seed)
    for r in range(rounds):
        rng.shuffle(order)
        for i in order:
            samples[i] += time_calls(fns[i], 0, calls, clock=clock)
        if progress:
            progress(r + 1, rounds)
    return samples


Clock = Literal["wall", "cpu"]


def resolve_clock(clock: Clock | None, threads: int) -> Clock:
    """The clock a measurement uses: ``None`` picks the calling thread's CPU time for one thread
    (all the work runs on it, so other processes' turns on the core do not count) else wall time."""
    if clock is None:
        return "cpu" if threads == 1 else "wall"
    if clock not in ("wall", "cpu"):
        raise InputError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and threads != 1:
        raise InputError(f"clock 'cpu' times the calling thread only, so it needs threads=1 (got "
                         f"{threads}); use clock='wall'")
    return clock


def clock_fn(clock: Clock) -> Callable[[], float]:
    """The timer function (seconds) of a clock name."""
    return time.thread_time if clock == "cpu" else time.perf_counter


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model call (ms per batch) from repeated timed runs after a warm-up."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    runtime: str
    threads: int
    batch_size: int
    repeats: int
    clock: str = "wall"  # 'cpu': the calling thread's CPU time (see ``resolve_clock``)

    @classmethod
    def from_times(cls, times: Sequence[float], *, runtime: str, threads: int, batch_size: int,
                   clock: str = "wall") -> LatencyStats:
        """Summarise call times (ms)."""
        a = np.asarray(times, dtype=float)
        return cls(float(np.median(a)), float(np.percentile(a, 90)), float(a.mean()), runtime, threads,
                   batch_size, len(a), clock)

    def as_dict(self) -> dict[str, Any]:
        """The stats as a JSON-ready dict."""
        return asdict(self)


def check_runtime(runtime: str) -> None:
    """Refuse a runtime that latency measurement does not support."""
    if runtime not in RUNTIMES:
        raise InputError(f"latency runtime {runtime!r} is unknown; choose one of {', '.join(RUNTIMES)}")


def require_cpu(model: nn.Module, what: str = "latency measurement") -> None:
    """Refuse a model whose weights are not on the CPU (``what`` names the caller in the message)."""
    first = next(model.parameters(), None)
    if first is not None and first.device.type != "cpu":
        raise InputError(f"{what} times CPU inference but the model is on {first.device}; pass model.cpu()")


def _as_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if len(hw) != 2 or min(hw) < 1:
        raise InputError(f"input_size must be a positive int or (height, width), got {input_size!r}")
    return hw[0], hw[1]


@contextlib.contextmanager
def prepared_call(model: nn.Module, x: torch.Tensor, *, runtime: str = "eager",
                  threads: int = 1) -> Iterator[Callable[[], object]]:
    """A zero-argument call running ``model`` (in eval mode) on ``x`` under ``runtime``, for timing
    inside the block (eager: under ``torch.inference_mode``; the others: a fresh session of the
    model exported to ONNX, quantized for int8, compiled by OpenVINO for openvino)."""
    check_runtime(runtime)
    require_cpu(model)
    was_training = model.training
    model.eval()
    try:
        if runtime == "eager":
            with torch.inference_mode():
                yield lambda: model(x)
            return
        with tempfile.TemporaryDirectory(prefix="effml-latency-") as tmp:
            path = Path(tmp) / "model.onnx"
            # Traced at batch >= 2 with a dynamic batch, as effml.deploy.export_onnx traces it.
            example = x if x.shape[0] >= 2 else x.expand(2, *x.shape[1:]).contiguous()
            onnx_program(model, example, ["output"]).save(path, external_data=False)
            if runtime == "int8":
                from effml.measure.int8 import quantize_onnx, random_calibration

                quantize_onnx(path, Path(tmp) / "int8.onnx", random_calibration(x.shape[1:]))
                path = Path(tmp) / "int8.onnx"
            array = x.numpy()
            if runtime == "openvino":
                from effml.measure.openvino import compile_openvino

                request = compile_openvino(path, threads).create_infer_request()  # type: ignore[attr-defined]
                yield lambda: request.infer({0: array}, share_inputs=True)
                return
            session = onnx_session(path, threads)
            feed = {INPUT_NAME: array}
            yield lambda: session.run(None, feed)
    finally:
        model.train(was_training)


def measure_latency(
    model: nn.Module,
    input_size: int | tuple[int, int],
    *,
    runtime: Runtime = "eager",
    batch_size: int = 1,
    threads: int = 1,
    warmup: int = 5,
    repeats: int | None = None,
    min_time_ms: float = MIN_TIME_MS,
    in_channels: int = 3,
    clock: Clock | None = None,
) -> LatencyStats:
    """Latency of ``model`` on a random batch on this CPU: the median of timed runs after a warm-up
    (``repeats=None``: at least ``MIN_REPEATS`` runs and ``min_time_ms`` in all; ``clock=None``:
    CPU time of the calling thread with one thread, else wall time)."""
    h, w = _as_hw(input_size)
    if batch_size < 1 or threads < 1 or warmup < 0 or (repeats is not None and repeats < 1):
        raise InputError(f"need batch_size >= 1, threads >= 1, warmup >= 0 and repeats >= 1 (got "
                         f"batch_size={batch_size}, threads={threads}, warmup={warmup}, repeats={repeats})")
    clock = resolve_clock(clock, threads)
    x = torch.randn(batch_size, in_channels, h, w, generator=torch.Generator().manual_seed(0))
    with torch_threads(threads) as n, prepared_call(model, x, runtime=runtime, threads=threads) as fn:
        times = time_calls(fn, warmup, MIN_REPEATS if repeats is None else repeats,
                           min_time_ms=min_time_ms if repeats is None else 0.0, clock=clock_fn(clock))
    return LatencyStats.from_times(times, runtime=runtime, threads=n, batch_size=batch_size, clock=clock)
