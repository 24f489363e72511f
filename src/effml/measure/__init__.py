"""Measuring networks on this machine: timing, one model's latency, per-layer latency tables, and
what they share with export: the ONNX Runtime session, the int8 recipe and OpenVINO's loading. It
sits below search and deploy, which both measure with it."""

from effml.measure.latency import LatencyStats, machine_fingerprint, measure_latency
from effml.measure.latency_table import LatencyTable, build_latency_table, load_latency_table, predict

__all__ = ["LatencyStats", "LatencyTable", "build_latency_table", "load_latency_table", "machine_fingerprint",
           "measure_latency", "predict"]
