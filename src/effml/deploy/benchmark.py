"""Inference latency and throughput of one model under several runtimes, on the same input."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effml.deploy.fuse import fuse_for_inference
from effml.deploy.onnx_export import INPUT_NAME, export_onnx, model_in_channels, onnx_session
from effml.errors import EffmlError, InputError
from effml.search.latency import require_cpu, time_calls, torch_threads

RUNTIMES = ("eager", "channels_last", "fused", "fused_channels_last", "onnxruntime")
DEFAULT_RUNTIMES = ("eager", "channels_last", "onnxruntime")


@dataclass(frozen=True)
class BenchResult:
    """Latency percentiles (ms per batch) and throughput of one (runtime, batch size)."""

    runtime: str
    batch_size: int
    input_size: int
    threads: int
    iters: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    images_per_s: float

    def as_dict(self) -> dict[str, float | int | str]:
        """The result as a JSON-ready dict."""
        return asdict(self)


def _resolve(model_or_name: nn.Module | str, input_size: int | None) -> tuple[nn.Module, int]:
    if isinstance(model_or_name, str):
        from effml.zoo import create_model

        model = create_model(model_or_name)
    else:
        model = model_or_name
    require_cpu(model, "benchmark")
    if input_size is None:
        spec = getattr(model, "spec", None)
        input_size = int(spec.resolution) if spec is not None else 224
    return model.eval(), input_size


def benchmark(
    model_or_name: nn.Module | str,
    *,
    batch_sizes: Sequence[int] = (1, 16),
    input_size: int | None = None,
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
    warmup: int = 5,
    iters: int = 20,
    threads: int | None = None,
) -> list[BenchResult]:
    """Time ``model(x)`` per (runtime, batch size) on random input; runtimes are in ``RUNTIMES``.

    ``eager``/``channels_last`` run under ``torch.inference_mode``; ``fused*`` first fold BN into
    the convs; ``onnxruntime`` runs the model exported (and verified) to a temporary directory.
    """
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise EffmlError(f"unknown runtime(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    bad = [b for b in batch_sizes if b < 1]
    if bad or not batch_sizes or iters < 1 or warmup < 0:
        raise InputError(f"need batch sizes >= 1, iters >= 1 and warmup >= 0 "
                         f"(got batch_sizes={tuple(batch_sizes)}, iters={iters}, warmup={warmup})")
    model, size = _resolve(model_or_name, input_size)
    channels = model_in_channels(model)
    gen = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, channels, size, size, generator=gen) for b in batch_sizes}
    results: list[BenchResult] = []
    with torch_threads(threads) as n_threads:
        for runtime in runtimes:
            for b, fn in _runners(runtime, model, inputs, size, threads):
                times = np.asarray(time_calls(fn, warmup, iters))
                mean = float(times.mean())
                results.append(BenchResult(
                    runtime=runtime, batch_size=b, input_size=size, threads=n_threads, iters=iters,
                    p50_ms=float(np.percentile(times, 50)), p90_ms=float(np.percentile(times, 90)),
                    mean_ms=mean, images_per_s=b * 1e3 / mean,
                ))
    return results


def _runners(
    runtime: str, model: nn.Module, inputs: dict[int, torch.Tensor], size: int, threads: int | None
) -> Iterator[tuple[int, Callable[[], object]]]:
    """(batch size, zero-argument call) pairs for one runtime, set up once for all batch sizes."""
    if runtime == "onnxruntime":
        with tempfile.TemporaryDirectory(prefix="effml-bench-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, path, input_size=size, batch_size=min(inputs), dynamic_batch=True)
            session = onnx_session(path, threads=threads)
            for b, x in inputs.items():
                feed = {INPUT_NAME: x.numpy()}
                yield b, lambda feed=feed: session.run(None, feed)
        return
    net = fuse_for_inference(model) if runtime.startswith("fused") else model
    if runtime.endswith("channels_last"):
        net = net.to(memory_format=torch.channels_last)
        inputs = {b: x.contiguous(memory_format=torch.channels_last) for b, x in inputs.items()}

    def call(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    try:
        for b, x in inputs.items():
            yield b, lambda x=x: call(net, x)
    finally:
        if runtime.endswith("channels_last") and net is model:
            model.to(memory_format=torch.contiguous_format)
