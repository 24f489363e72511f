"""OpenVINO as an optional runtime: the IR (``.xml`` + ``.bin``) written from an exported ONNX file
and verified against PyTorch, and ``OpenVinoRunner``, which runs an IR or an ONNX file on
OpenVINO's CPU plugin as ``OnnxRunner`` runs one in ONNX Runtime (torch in, the network's
structure out).

OpenVINO is an extra (``pip install "effml[openvino]"``); without it every entry point here
raises ``InputError`` saying so. Loading and compiling are in ``effml.measure.openvino``, shared with
latency measurement.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from effml.deploy.onnx_export import output_difference
from effml.deploy.runtime import Dim, GraphRunner
from effml.errors import ExportError, InputError
from effml.files import fsync_dir, fsync_file, os_error, remove_files
from effml.measure.openvino import compile_openvino, load_openvino, read_openvino_model

IR_SUFFIX = ".xml"  # the IR's graph; its weights are the ``.bin`` of the same name


def _dims(shape: object) -> tuple[Dim, ...]:
    """An OpenVINO partial shape as sizes, with None where a dimension is dynamic."""
    return tuple(d.get_length() if d.is_static else None for d in shape)  # type: ignore[attr-defined]


class OpenVinoRunner(GraphRunner):
    """``runner(x)``: an OpenVINO IR (``.xml``) or an ONNX file run on OpenVINO's CPU plugin, in
    float32, with ``threads`` inference threads (default: OpenVINO's) and the latency hint."""

    kind = "OpenVINO"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        path = Path(path)
        self.compiled = compile_openvino(path, threads)
        self._describe(path, [_dims(i.get_partial_shape()) for i in self.compiled.inputs],
                       [(o.get_any_name(), _dims(o.get_partial_shape())) for o in self.compiled.outputs])
        self.request = self.compiled.create_infer_request()

    def run_arrays(self, x: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs, in its order, for a float32 NCHW array."""
        # share_inputs: the request reads ``x`` in place (the call is synchronous); outputs are copies,
        # so the next call does not overwrite what a caller still holds
        result = self.request.infer({0: x}, share_inputs=True)
        return [result[o] for o in self.compiled.outputs]


@dataclass(frozen=True)
class OpenVinoReport:
    """What ``export_openvino`` wrote and how closely OpenVINO matched PyTorch."""

    path: Path
    weights: Path
    max_abs_diff: float
    atol: float
    rtol: float
    size_bytes: int


def ir_paths(onnx_path: str | Path) -> tuple[Path, Path]:
    """The IR's ``.xml`` and ``.bin`` beside an ONNX file; ``InputError`` if either cannot be
    written as a file (checked before anything is exported)."""
    onnx_path = Path(onnx_path)
    xml = onnx_path.with_suffix(IR_SUFFIX)
    if xml == onnx_path:
        raise InputError(f"{onnx_path}: the ONNX file needs another suffix (model.onnx): the OpenVINO IR "
                         f"goes beside it as {xml.name}")
    paths = (xml, xml.with_suffix(".bin"))
    for p in paths:
        if p.exists() and not p.is_file():
            raise InputError(f"cannot write the OpenVINO IR: {p} exists and is not a regular file")
    return paths


def export_openvino(model: nn.Module, onnx_path: str | Path, *, batch_size: int = 1, atol: float = 1e-4,
                    rtol: float = 1e-5, threads: int | None = None) -> OpenVinoReport:
    """The ONNX file that ``export_onnx`` wrote for ``model``, converted to an fp32 OpenVINO IR beside
    it (``ir_paths``) and verified against PyTorch as the ONNX export is (``atol + rtol x`` the
    largest output, at ``batch_size`` and, for a dynamic batch, 2). Nothing appears unless it matches."""
    ov = load_openvino()
    xml, weights = ir_paths(onnx_path)
    tmpdir: Path | None = None
    moved: list[Path] = []
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{xml.name}.", suffix=".tmp", dir=xml.parent))
        tmp = tmpdir / xml.name
        # fp32 weights: save_model compresses them to fp16 by default
        # (docs.openvino.ai/2025/openvino-workflow/model-preparation/conversion-parameters.html)
        ov.save_model(read_openvino_model(ov, Path(onnx_path)), str(tmp), compress_to_fp16=False)
        runner = OpenVinoRunner(tmp, threads=threads)
        dynamic = not isinstance(runner.input_shape[0], int)
        batches = [batch_size] + ([2] if dynamic and batch_size != 2 else [])
        chw = tuple(int(d) for d in runner.input_shape[1:])  # type: ignore[arg-type]
        diff, excess, allowed = output_difference(model, runner.run_arrays, chw, batches, atol, rtol, "OpenVINO")
        del runner  # the compiled model maps the weights file
        if not excess <= 0:  # also catches NaN
            raise ExportError(f"OpenVINO output differs from PyTorch by {diff:.3g} (> {allowed:.3g}: atol {atol:g} "
                              f"+ rtol {rtol:g} x the largest output); no IR was written (the ONNX model "
                              f"{onnx_path} is kept)")
        for f in (tmp.with_suffix(".bin"), tmp):
            fsync_file(f)
        # the weights first: once the graph is there, so are they
        for f, final in ((tmp.with_suffix(".bin"), weights), (tmp, xml)):
            os.replace(f, final)
            moved.append(final)
        fsync_dir(xml.parent)
        return OpenVinoReport(path=xml, weights=weights, max_abs_diff=diff, atol=atol, rtol=rtol,
                              size_bytes=xml.stat().st_size + weights.stat().st_size)
    except OSError as e:
        remove_files(moved)
        raise os_error(e, "write the OpenVINO IR", xml, note="no IR was written") from None
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

