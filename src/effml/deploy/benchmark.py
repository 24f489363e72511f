"""Inference latency and throughput of one model under several runtimes, on the same input,
optionally side by side with a peer library's equivalent model (interleaved calls)."""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from effml.deploy.onnx_export import export_onnx
from effml.deploy.openvino_runtime import OpenVinoRunner
from effml.measure.openvino import load_openvino, openvino_available
from effml.errors import EffmlError, InputError
from effml.measure.latency import require_cpu, time_interleaved, torch_threads
from effml.measure.onnx import INPUT_NAME, model_in_channels, onnx_session
from effml.models.fuse import fuse_for_inference

RUNTIMES = ("eager", "channels_last", "fused", "fused_channels_last", "compiled", "fused_compiled",
            "onnxruntime", "int8", "openvino")
# openvino joins these where it is installed (``default_runtimes``)
DEFAULT_RUNTIMES = ("eager", "fused_channels_last", "compiled", "onnxruntime", "int8")
# Runtimes that time the model exported to ONNX (and verified) rather than the PyTorch module.
EXPORTED = ("onnxruntime", "int8", "openvino")
# Runtimes that rely on effml's own module tables (BN folding): a peer has no equivalent.
EFFML_ONLY = ("fused", "fused_channels_last", "fused_compiled")
RUNTIME_NOTES = {
    "fused": "BatchNorm folded into the convs",
    "compiled": "torch.compile (inductor), compiled before timing",
    "fused_compiled": "BN folded, then torch.compile",
    "onnxruntime": "ONNX Runtime fp32, all graph optimizations",
    "int8": "ONNX Runtime int8 (QDQ); calibrated on random input: speed only",
    "openvino": "OpenVINO CPU plugin fp32 (latency hint), on the same ONNX graph as onnxruntime",
}


@dataclass(frozen=True)
class BenchResult:
    """Latency percentiles (ms per batch) and throughput of one (library, runtime, batch size)."""

    runtime: str
    batch_size: int
    input_size: int
    threads: int
    iters: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    images_per_s: float
    library: str = "effml"

    def as_dict(self) -> dict[str, float | int | str]:
        """The result as a JSON-ready dict."""
        return asdict(self)


def _network(model: Any, input_size: int | None) -> tuple[nn.Module, int]:
    """The network to time and its input size: any PyTorch module as it is (224 px by default), or a
    model argument (``effml.train.resolve``) built, at its spec's resolution by default."""
    if isinstance(model, nn.Module) and getattr(model, "spec", None) is None:
        net, size = model, input_size or 224
    else:
        from effml.train.resolve import resolve_model

        resolved = resolve_model(model)
        net, size = resolved.build(), input_size or int(resolved.spec.resolution)
    require_cpu(net, "benchmark")
    return net.eval(), size


def benchmark(
    model_or_name: Any,
    *,
    batch_sizes: Sequence[int] = (1, 16),
    input_size: int | None = None,
    runtimes: Sequence[str] | None = None,
    warmup: int = 5,
    iters: int = 20,
    threads: int | None = None,
    peer: nn.Module | None = None,
    peer_name: str = "peer",
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time ``model(x)`` per (runtime, batch size) on random input; runtimes are in ``RUNTIMES``
    (default: ``default_runtimes()``).

    ``model_or_name`` is a model argument (a zoo name, a spec JSON file, a run directory, a spec, a
    module built from a spec) or any PyTorch module on the CPU.

    ``eager``/``channels_last`` run under ``torch.inference_mode``; ``fused*`` first fold BN into
    the convs; ``compiled`` is ``torch.compile``; ``onnxruntime``/``int8``/``openvino`` run the model
    exported (and verified) to a temporary directory. With ``peer``, the peer's model is timed in the
    same rounds (calls interleaved in random order) under every runtime it supports.
    """
    runtimes = default_runtimes() if runtimes is None else tuple(runtimes)
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise EffmlError(f"unknown runtime(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    if "openvino" in runtimes:
        load_openvino()  # a missing install is one clear error before any timing
    bad = [b for b in batch_sizes if b < 1]
    if bad or not batch_sizes or iters < 1 or warmup < 0:
        raise InputError(f"need batch sizes >= 1, iters >= 1 and warmup >= 0 "
                         f"(got batch_sizes={tuple(batch_sizes)}, iters={iters}, warmup={warmup})")
    model, size = _network(model_or_name, input_size)
    if peer is not None:
        require_cpu(peer, "benchmark")
        peer.eval()
    channels = model_in_channels(model)
    gen = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, channels, size, size, generator=gen) for b in batch_sizes}
    results: list[BenchResult] = []
    # the exported runtimes first: their export checks the model against ONNX Runtime, which should fail
    # (if it does) before minutes of timing; the results keep the order asked for
    order = sorted(runtimes, key=lambda r: r not in EXPORTED)
    with torch_threads(threads) as n_threads:
        for step, runtime in enumerate(order, 1):
            if progress is not None:
                what = "export, check and time" if runtime in EXPORTED else "time"
                progress(f"[{step}/{len(order)}] {runtime}: {what} at batch {', '.join(map(str, batch_sizes))}")
            contenders = [("effml", model)]
            if peer is not None and runtime not in EFFML_ONLY:
                contenders.append((peer_name, peer))
            with contextlib.ExitStack() as stack:
                calls = [stack.enter_context(_runner(runtime, m, inputs, size, threads)) for _, m in contenders]
                for b in batch_sizes:
                    per = time_interleaved([c[b] for c in calls], warmup=warmup, rounds=iters)
                    for (library, _), times in zip(contenders, per):
                        results.append(_result(library, runtime, b, size, n_threads, times))
    return sorted(results, key=lambda r: list(runtimes).index(r.runtime))


def default_runtimes() -> tuple[str, ...]:
    """The runtimes ``benchmark`` times unless told: ``DEFAULT_RUNTIMES``, and ``openvino`` where
    OpenVINO is installed."""
    return DEFAULT_RUNTIMES + (("openvino",) if openvino_available() else ())


def _result(library: str, runtime: str, batch: int, size: int, threads: int, times: list[float]) -> BenchResult:
    t = np.asarray(times)
    mean = float(t.mean())
    return BenchResult(runtime=runtime, batch_size=batch, input_size=size, threads=threads, iters=len(t),
                       p50_ms=float(np.percentile(t, 50)), p90_ms=float(np.percentile(t, 90)),
                       mean_ms=mean, images_per_s=batch * 1e3 / mean, library=library)


def ratios(results: Sequence[BenchResult]) -> dict[tuple[str, int], float]:
    """Per (runtime, batch): the peer's p50 over effml's (> 1: effml is faster)."""
    ours = {(r.runtime, r.batch_size): r.p50_ms for r in results if r.library == "effml"}
    return {(r.runtime, r.batch_size): r.p50_ms / ours[r.runtime, r.batch_size]
            for r in results if r.library != "effml" and (r.runtime, r.batch_size) in ours}


def fastest(results: Sequence[BenchResult], library: str, batch: int) -> BenchResult | None:
    """The fastest runtime of one library at one batch size."""
    rows = [r for r in results if r.library == library and r.batch_size == batch and math.isfinite(r.p50_ms)]
    return min(rows, key=lambda r: r.p50_ms) if rows else None


@contextlib.contextmanager
def _runner(runtime: str, model: nn.Module, inputs: dict[int, torch.Tensor], size: int,
            threads: int | None) -> Iterator[dict[int, Callable[[], object]]]:
    """Per batch size, a zero-argument call running ``model`` under ``runtime`` (set up once)."""
    if runtime in EXPORTED:
        with tempfile.TemporaryDirectory(prefix="effml-bench-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, path, input_size=size, batch_size=min(inputs), dynamic_batch=True)
            if runtime == "int8":
                from effml.measure.int8 import quantize_onnx, random_calibration

                quantize_onnx(path, Path(tmp) / "int8.onnx", random_calibration(inputs[min(inputs)].shape[1:]))
                path = Path(tmp) / "int8.onnx"
            if runtime == "openvino":
                runner = OpenVinoRunner(path, threads=threads)
                yield {b: (lambda x=x.numpy(): runner.run_arrays(x)) for b, x in inputs.items()}
                return
            session = onnx_session(path, threads=threads)
            yield {b: (lambda feed={INPUT_NAME: x.numpy()}: session.run(None, feed)) for b, x in inputs.items()}
        return
    net = fuse_for_inference(model) if runtime.startswith("fused") else model
    if runtime.endswith("channels_last"):
        net = net.to(memory_format=torch.channels_last)
        inputs = {b: x.contiguous(memory_format=torch.channels_last) for b, x in inputs.items()}
    if runtime.endswith("compiled"):
        net = torch.compile(net)

    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x)

    try:
        yield {b: (lambda x=x: call(x)) for b, x in inputs.items()}
    finally:
        if runtime.endswith("channels_last") and net is model:
            model.to(memory_format=torch.contiguous_format)
