"""A model under ONNX Runtime: the exporter call, the session, the output order and names.

Export and latency measurement share these, so a measured ONNX Runtime latency is that of the
graph ``effml export`` writes. Why the torch.export ("dynamo") exporter: since PyTorch 2.9 it is the
default and the TorchScript exporter is deprecated. It traces TF 'SAME' padding (``Conv2dSame``) at
the exported spatial size and keeps only the batch dimension symbolic, so the graph holds constant
``Pad`` sizes (huggingface/pytorch-image-models#646: dynamic padding broke earlier exports).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from effml.errors import ExportError, InputError

EXPORTER = "torch.onnx.export(dynamo=True)"
INPUT_NAME = "input"


def model_in_channels(model: nn.Module) -> int:
    """Input channels of a model: its spec's, else those of its first convolution."""
    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "in_channels"):
        return int(spec.in_channels)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def flat_outputs(out: object) -> list[torch.Tensor]:
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
    flat = flat_outputs(out)
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


def onnx_program(model: nn.Module, example: torch.Tensor, names: list[str], dynamic_batch: bool = True,
                 opset: int | None = None):
    """``model`` traced on ``example`` by the torch.export-based exporter (batch dimension dynamic
    unless ``dynamic_batch`` is False): an in-memory ONNX program, or ``ExportError`` with the cause."""
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        # The exporter logs a traceback when it cannot convert to an older opset and then keeps
        # its own; the opset check below turns that into one clear error instead.
        with quiet_loggers("torch.onnx", "onnxscript"):
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
def quiet_loggers(*names: str) -> Iterator[None]:
    """Silence the named loggers for a block."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
