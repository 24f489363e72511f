"""ONNX export, written atomically and verified with ONNX Runtime (the exporter call and the session
are ``effml.measure.onnx``'s, which latency measurement shares)."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effml.errors import ExportError, InputError
from effml.files import file_in_the_way, fsync_dir, fsync_file, os_error, remove_empty_dirs, remove_files
from effml.measure.onnx import (
    EXPORTER,
    INPUT_NAME,
    default_output_names,
    flat_outputs,
    model_device,
    model_in_channels,
    onnx_program,
    onnx_session,
)


@dataclass(frozen=True)
class ExportReport:
    """What ``export_onnx`` wrote and how closely ONNX Runtime matched PyTorch."""

    path: Path
    files: tuple[Path, ...]
    input_shape: tuple[int, int, int, int]
    dynamic_batch: bool
    opset: int
    output_names: tuple[str, ...]
    max_abs_diff: float | None  # None when not verified
    atol: float
    rtol: float
    size_bytes: int
    seconds: float
    exporter: str = EXPORTER


def _as_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    hw = tuple(int(s) for s in input_size)
    if len(hw) != 2:
        raise InputError(f"input_size must be an int or (height, width), got {input_size!r}")
    return hw[0], hw[1]


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: int | Sequence[int],
    batch_size: int = 1,
    dynamic_batch: bool = True,
    opset: int | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    in_channels: int | None = None,
) -> ExportReport:
    """Export ``model`` (in eval mode) to ONNX at ``path``; verify it against PyTorch with ONNX Runtime.

    Verification allows ``atol + rtol * max|output|`` per output, so float32 rounding that grows with
    the outputs (logits in the hundreds) passes and a real mismatch does not. Nothing appears at
    ``path`` unless export (and verification) succeeded. Weights over the 2 GB
    protobuf limit go to ``<path>.data`` beside the model. Outputs are flat and named (see
    ``default_output_names``): a detector's ``(class list, box list)`` becomes ``class_p3..``,
    ``box_p3..``; its anchors, decoding and NMS stay outside the graph.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if not (atol >= 0 and rtol >= 0):
        raise InputError(f"atol and rtol must be >= 0, got {atol} and {rtol}")
    h, w = _as_hw(input_size)
    channels = in_channels or model_in_channels(model)
    final = Path(path)
    created = prepare_output(final)
    # torch.export specialises a dimension seen with size 1, so a dynamic batch is traced with 2.
    trace_batch = max(batch_size, 2) if dynamic_batch else batch_size
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(trace_batch, channels, h, w, generator=gen).to(model_device(model))

    was_training = model.training
    model.eval()
    start = time.perf_counter()
    tmpdir: Path | None = None
    moved: list[Path] = []
    done = False
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        with torch.inference_mode():
            names = default_output_names(model, model(example[:1]))
        program = onnx_program(model, example, names, dynamic_batch, opset)
        tmp = tmpdir / final.name
        program.save(tmp, external_data=False)  # switches to external data above 2 GB by itself
        written = sorted(tmpdir.iterdir())
        for f in written:
            fsync_file(f)
        diff = None
        if verify:
            batches = [batch_size] if trace_batch == batch_size else [batch_size, trace_batch]
            diff, excess, allowed = _max_abs_diff(model, tmp, channels, (h, w), batches, atol, rtol)
            if not excess <= 0:  # also catches NaN
                raise ExportError(
                    f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> {allowed:.3g}: atol {atol:g} + "
                    f"rtol {rtol:g} x the largest output); nothing was written to {final}. Check for ops that "
                    f"trace differently, or raise atol / rtol if the difference is expected (e.g. fp16)"
                )
        # External data first, the model last: once the model file is there, so is its data.
        for f in [f for f in written if f != tmp] + [tmp]:
            os.replace(f, final.parent / f.name)
            moved.append(final.parent / f.name)
        fsync_dir(final.parent)
        done = True
        return ExportReport(
            path=final, files=tuple(moved),
            input_shape=(batch_size, channels, h, w), dynamic_batch=dynamic_batch,
            opset=int(program.model.opset_imports.get("", 0)), output_names=tuple(names),
            max_abs_diff=diff, atol=atol, rtol=rtol, size_bytes=sum(f.stat().st_size for f in moved),
            seconds=time.perf_counter() - start,
        )
    except OSError as e:  # full disk, read-only or vanished folder, permissions: say which and where
        raise os_error(e, "write the ONNX model", final, note=_NOTHING_WRITTEN) from None
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        if not done:  # a failure between the moves leaves no model without its data
            remove_files(moved)
            remove_empty_dirs(created)
        model.train(was_training)


_NOTHING_WRITTEN = "nothing was written"


def prepare_output(final: Path) -> list[Path]:
    """Refuse an output path that cannot be a model file; create its folder. Returns the folders
    created (for the caller to remove again if the export fails)."""
    try:
        if final.is_dir():
            raise InputError(f"ONNX output {final} is a directory; give a file name such as model.onnx")
        if final.exists() and not final.is_file():  # /dev/null, a FIFO: never replaced by a rename
            raise InputError(f"ONNX output {final} exists and is not a regular file; give a file name "
                             f"such as model.onnx")
    except OSError as e:
        raise os_error(e, "write the ONNX model", final, note=_NOTHING_WRITTEN) from None
    blocker = file_in_the_way(final.parent)
    if blocker is not None:
        raise InputError(f"cannot write the ONNX model {final}: {blocker} is a file, not a folder; "
                         f"choose another path")
    created = [p for p in reversed(final.parents) if not p.exists()]
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty_dirs(created)
        raise os_error(e, "create the folder of the ONNX model", final.parent, note=_NOTHING_WRITTEN) from None
    return created


def _max_abs_diff(model: nn.Module, onnx_path: Path, channels: int, hw: tuple[int, int],
                  batches: Sequence[int], atol: float, rtol: float) -> tuple[float, float, float]:
    """``output_difference`` of ONNX Runtime running ``onnx_path``."""
    try:
        session = onnx_session(onnx_path)
    except InputError as e:
        raise ExportError(f"the exported model does not load in ONNX Runtime: {e}") from None

    def run(x: np.ndarray) -> list[np.ndarray]:
        try:
            return session.run(None, {INPUT_NAME: x})
        except Exception as e:
            raise ExportError(f"ONNX Runtime failed to run the exported model at batch {len(x)}: {e}") from None

    return output_difference(model, run, (channels, *hw), batches, atol, rtol, "ONNX")


def output_difference(model: nn.Module, run: Callable[[np.ndarray], Sequence[np.ndarray]],
                      chw: tuple[int, int, int], batches: Sequence[int], atol: float, rtol: float,
                      runtime: str) -> tuple[float, float, float]:
    """Over random batches of shape (b, *chw), the largest |run(x) - PyTorch| over the outputs; how far
    the worst output is past its allowance ``atol + rtol * max|output|`` (<= 0: within), and that
    allowance. ``runtime`` names the exported graph's runtime in a shape mismatch's error."""
    gen = torch.Generator().manual_seed(1)
    worst, excess, allowed = 0.0, -math.inf, atol
    for b in batches:
        x = torch.randn(b, *chw, generator=gen)
        with torch.inference_mode():
            expected = [t.float().cpu().numpy() for t in flat_outputs(model(x.to(model_device(model))))]
        got = run(x.numpy())
        for e_out, g_out in zip(expected, got, strict=True):
            if e_out.shape != g_out.shape:
                raise ExportError(f"{runtime} output shape {g_out.shape} != PyTorch {e_out.shape} at batch {b}")
            if e_out.size:
                diff = float(np.max(np.abs(e_out - g_out)))
                limit = atol + rtol * float(np.max(np.abs(e_out)))
                if np.isnan(diff) or diff - limit > excess:
                    excess, allowed = (math.nan if np.isnan(diff) else diff - limit), limit
                worst = diff if np.isnan(diff) else max(worst, diff)
    return worst, excess, allowed
