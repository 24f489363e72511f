"""Deployment: ONNX export and ONNX Runtime sessions, the OpenVINO IR and runtime (optional), int8
quantization, BN folding, latency benchmarks."""

from effml.deploy.benchmark import RUNTIMES, BenchResult, benchmark
from effml.deploy.image_detector import ImageDetector, PictureDetections
from effml.deploy.onnx_export import ExportReport, export_onnx
from effml.deploy.openvino_runtime import OpenVinoReport, OpenVinoRunner, export_openvino
from effml.deploy.quantize import (
    Int8RefusedError,
    Int8Report,
    export_int8,
    quantize_onnx,
)
from effml.deploy.runtime import OnnxRunner, onnx_runner
from effml.measure.onnx import onnx_session
from effml.models.fuse import fold_conv_bn, fuse_for_inference

__all__ = [
    "RUNTIMES", "BenchResult", "ExportReport", "ImageDetector", "Int8RefusedError", "Int8Report", "OnnxRunner",
    "OpenVinoReport", "OpenVinoRunner", "PictureDetections",
    "benchmark", "export_int8", "export_onnx", "export_openvino", "fold_conv_bn", "fuse_for_inference",
    "onnx_runner", "onnx_session", "quantize_onnx",
]
