"""OpenVINO fp32 and bf16 against ONNX Runtime fp32, in interleaved rounds (the README's
Deployment table 6).

OpenVINO's CPU plugin computes in bf16 on a CPU with AVX512_BF16 or AMX unless it is told f32
(docs.openvino.ai, CPU device, floating-point precision). effml's ``OpenVinoRunner`` asks for
f32. This script times, for EfficientNet-B0 (224 px) and EfficientNet-Lite1 (240 px) at batch 1:
ONNX Runtime fp32 (its threads not spinning between calls, so that they do not take the cores
from the other runtimes), OpenVINO f32 and OpenVINO bf16, all on the same exported graph. The
calls are interleaved in each round. It prints the medians, the ratios and the largest output
difference of each OpenVINO precision from ONNX Runtime. The weights are random: only the
speed is measured.

Usage: python benchmarks/openvino_precision.py [--threads 2] [--rounds 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

import effml
from effml.deploy.onnx_export import export_onnx
from effml.deploy.openvino_runtime import load_openvino
from effml.measure.latency import time_interleaved
from effml.measure.onnx import INPUT_NAME, onnx_session

MODELS = (("efficientnet_b0", 224), ("tf_efficientnet_lite1", 240))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=300)
    args = p.parse_args(argv)
    ov = load_openvino()
    import openvino.properties as props
    import openvino.properties.hint as hints

    print(f"batch 1, {args.threads} threads, median ms of {args.rounds} interleaved rounds")
    for name, size in MODELS:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(effml.create_model(name).eval(), path, input_size=size, dynamic_batch=True)
            x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
            ort = onnx_session(path, threads=args.threads, spin=False)
            model = ov.convert_model(str(path))
            requests = {}
            for precision in ("f32", "bf16"):
                config = {props.hint.performance_mode: hints.PerformanceMode.LATENCY,
                          props.inference_num_threads: args.threads,
                          props.hint.inference_precision: getattr(ov.Type, precision)}
                requests[precision] = ov.Core().compile_model(model, "CPU", config).create_infer_request()
            calls = [lambda: ort.run(None, {INPUT_NAME: x}), lambda: requests["f32"].infer({0: x}),
                     lambda: requests["bf16"].infer({0: x})]
            ms = [statistics.median(t) for t in time_interleaved(calls, warmup=20, rounds=args.rounds)]
            ref = ort.run(None, {INPUT_NAME: x})[0]
            diff = {k: float(np.abs(r.infer({0: x})[0] - ref).max()) for k, r in requests.items()}
        print(f"{name} at {size} px: ONNX Runtime fp32 {ms[0]:.2f} ms, OpenVINO f32 {ms[1]:.2f} ms "
              f"({ms[0] / ms[1]:.2f}x), OpenVINO bf16 {ms[2]:.2f} ms ({ms[0] / ms[2]:.2f}x); largest output "
              f"difference from ONNX Runtime: f32 {diff['f32']:.2g}, bf16 {diff['bf16']:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
