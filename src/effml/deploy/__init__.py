"""Deployment: ONNX export and ONNX Runtime sessions, BN folding, latency benchmarks."""

from effml.deploy.benchmark import RUNTIMES, BenchResult, benchmark
from effml.deploy.fuse import fold_conv_bn, fuse_for_inference
from effml.deploy.onnx_export import ExportReport, export_onnx, onnx_session

__all__ = [
    "RUNTIMES", "BenchResult", "ExportReport", "benchmark", "export_onnx", "fold_conv_bn",
    "fuse_for_inference", "onnx_session",
]
