"""ONNX export with the torch.export-based exporter, written atomically and verified with ONNX Runtime.

Why the torch.export ("dynamo") exporter: since PyTorch 2.9 it is the default and the TorchScript
exporter is deprecated. It traces TF 'SAME' padding (``Conv2dSame``) at the exported spatial size
and keeps only the batch dimension symbolic, so the graph holds constant ``Pad`` sizes
(huggingface/pytorch-image-models#646: dynamic padding broke earlier exports).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effml.data.files import file_in_the_way, os_error, remove_empty_dirs, remove_files
from effml.errors import ExportError, InputError
from effml.models.weights import fsync_dir

EXPORTER = "torch.onnx.export(dynamo=True)"
INPUT_NAME = "input"


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


def model_in_channels(model: nn.Module) -> int:
    """Input channels of a model: its spec's, else those of its first convolution."""
    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "in_channels"):
        return int(spec.in_channels)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _outputs(out: object) -> list[torch.Tensor]:
    """The model's outputs in ONNX order: a tensor, a list of tensors, or nested lists (a
    detector's ``(class_outputs, box_outputs)``) flattened depth-first, as the exporter does."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)) and out:
        flat = []
        for item in out:
            if isinstance(item, torch.Tensor):
                flat.append(item)
            elif isinstance(item, (list, tuple)) and item and all(isinstance(t, torch.Tensor) for t in item):
                flat.extend(item)
            else:
                break
        else:
            return flat
    raise ExportError(f"model output must be a tensor, a list of tensors or a tuple of such lists, "
                      f"got {type(out).__name__}")


def default_output_names(model: nn.Module, out: object) -> list[str]:
    """ONNX output names: 'logits' for one tensor; ``class_p3..``, ``box_p3..`` for a detector
    (forward -> (per-level class outputs, per-level box outputs), lowest level first, as
    EfficientDet; ``class_0..`` when the maps are not pyramid levels); else ``features_0..``."""
    flat = _outputs(out)
    if len(flat) == 1:
        return ["logits"]
    if (hasattr(model, "box_coder") and isinstance(out, (list, tuple)) and len(out) == 2
            and all(isinstance(o, (list, tuple)) for o in out) and len(out[0]) == len(out[1])):
        anchors = getattr(getattr(model, "spec", None), "anchors", None)
        tags = [f"p{lvl}" for lvl in range(anchors.min_level, anchors.max_level + 1)] \
            if getattr(anchors, "num_levels", None) == len(out[0]) else [str(i) for i in range(len(out[0]))]
        return [f"class_{t}" for t in tags] + [f"box_{t}" for t in tags]
    return [f"features_{i}" for i in range(len(flat))]


def onnx_session(path: str | Path, threads: int | None = None, *, spin: bool = True):
    """An ONNX Runtime CPU ``InferenceSession`` for a model file (``threads`` intra-op threads).

    ``spin=False``: ORT's idle threads sleep at once instead of spinning, for pipelines where
    PyTorch runs between the ONNX calls (pre- and post-processing) and needs the cores.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise InputError(f"ONNX model {path} does not exist")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: ORT warns about unused initializers
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
        raise InputError(f"ONNX Runtime cannot load {path}: {e}") from None


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


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
    in_channels: int | None = None,
) -> ExportReport:
    """Export ``model`` (in eval mode) to ONNX at ``path``; verify it against PyTorch with ONNX Runtime.

    Nothing appears at ``path`` unless export (and verification) succeeded. Weights over the 2 GB
    protobuf limit go to ``<path>.data`` beside the model. Outputs are flat and named (see
    ``default_output_names``): a detector's ``(class list, box list)`` becomes ``class_p3..``,
    ``box_p3..``; its anchors, decoding and NMS stay outside the graph.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if atol < 0:
        raise InputError(f"atol must be >= 0, got {atol}")
    h, w = _as_hw(input_size)
    channels = in_channels or model_in_channels(model)
    final = Path(path)
    created = prepare_output(final)
    # torch.export specialises a dimension seen with size 1, so a dynamic batch is traced with 2.
    trace_batch = max(batch_size, 2) if dynamic_batch else batch_size
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(trace_batch, channels, h, w, generator=gen).to(_device(model))

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
        program = _export(model, example, names, dynamic_batch, opset)
        tmp = tmpdir / final.name
        program.save(tmp, external_data=False)  # switches to external data above 2 GB by itself
        written = sorted(tmpdir.iterdir())
        for f in written:
            _fsync(f)
        diff = None
        if verify:
            batches = [batch_size] if trace_batch == batch_size else [batch_size, trace_batch]
            diff = _max_abs_diff(model, tmp, channels, (h, w), batches)
            if not diff <= atol:  # also catches NaN
                raise ExportError(
                    f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> atol {atol:g}); "
                    f"nothing was written to {final}. Check for ops that trace differently, or "
                    f"raise atol if the difference is expected (e.g. fp16)"
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
            max_abs_diff=diff, atol=atol, size_bytes=sum(f.stat().st_size for f in moved),
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


def _export(model: nn.Module, example: torch.Tensor, names: list[str], dynamic_batch: bool,
            opset: int | None):
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        # The exporter logs a traceback when it cannot convert to an older opset and then keeps
        # its own; the opset check below turns that into one clear error instead.
        with _quiet_loggers("torch.onnx", "onnxscript"):
            program = torch.onnx.export(
                model, (example,), None, input_names=[INPUT_NAME], output_names=names,
                opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False,
            )
    except Exception as e:  # the exporter raises many types; the user needs the cause, not ours
        cause = str(e) if len(str(e)) <= 1500 else str(e)[:1500] + " ..."
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {cause}") from e
    if program is None:  # only the TorchScript path returns None
        raise ExportError("torch.onnx.export returned no ONNX program")
    written = int(program.model.opset_imports.get("", 0))
    if opset is not None and written != opset:
        raise ExportError(
            f"cannot write ONNX opset {opset}: the exporter produced opset {written} and could not "
            f"convert this model to {opset}; nothing was written. Use --opset {written} or newer, "
            f"or leave --opset out")
    return program


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _max_abs_diff(model: nn.Module, onnx_path: Path, channels: int, hw: tuple[int, int],
                  batches: Sequence[int]) -> float:
    try:
        session = onnx_session(onnx_path)
    except InputError as e:
        raise ExportError(f"the exported model does not load in ONNX Runtime: {e}") from None
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for b in batches:
        x = torch.randn(b, channels, *hw, generator=gen)
        with torch.inference_mode():
            expected = [t.float().cpu().numpy() for t in _outputs(model(x.to(_device(model))))]
        try:
            got = session.run(None, {INPUT_NAME: x.numpy()})
        except Exception as e:
            raise ExportError(f"ONNX Runtime failed to run the exported model at batch {b}: {e}") from None
        for e_out, g_out in zip(expected, got, strict=True):
            if e_out.shape != g_out.shape:
                raise ExportError(f"ONNX output shape {g_out.shape} != PyTorch {e_out.shape} at batch {b}")
            if e_out.size:
                diff = float(np.max(np.abs(e_out - g_out)))
                worst = diff if np.isnan(diff) else max(worst, diff)
    return worst
