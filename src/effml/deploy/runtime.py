"""Run an exported ONNX model as a drop-in for the PyTorch network it came from.

``OnnxRunner`` takes and returns torch tensors in the network's own structure: one tensor for a
classifier, ``(class outputs per level, box outputs per level)`` for a detector (the ONNX outputs
``class_*`` then ``box_*``, see ``onnx_export.default_output_names``). So ``DetectionPredictor``'s
anchors, decoding and NMS run unchanged on ONNX Runtime's outputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effml.deploy.onnx_export import export_onnx
from effml.errors import InputError
from effml.measure.onnx import onnx_session


class OnnxRunner:
    """``runner(x)``: the ONNX model at ``path`` run by ONNX Runtime on a torch batch."""

    def __init__(self, path: str | Path, *, threads: int | None = None, spin: bool = True) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path, threads=threads, spin=spin)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InputError(f"ONNX model {self.path} has {len(inputs)} inputs; effml runs models with one "
                             f"image input (as `effml export` writes them)")
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape)  # [N, C, H, W]; N may be a symbol
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.is_detector = any(n.startswith("class_") for n in self.output_names)

    def check_input(self, channels: int, height: int, width: int) -> None:
        """Refuse, naming the file, an image size the ONNX graph was not exported for."""
        want = self.input_shape[1:]
        got = (channels, height, width)
        if any(isinstance(w, int) and w != g for w, g in zip(want, got)):
            raise InputError(f"ONNX model {self.path} takes input {'x'.join(map(str, want))} but the "
                             f"images are prepared as {'x'.join(map(str, got))}; export it at this size "
                             f"(effml export ... --input-size {height}) or pass --input-size "
                             f"{want[-1]}")

    def check_classes(self, classes: int) -> None:
        """Refuse, naming the file, a classifier whose logits are not the model's ``classes`` (the
        labels would name other classes)."""
        outputs = self.session.get_outputs()
        shape = tuple(outputs[0].shape) if len(outputs) == 1 and not self.is_detector else ()
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] != classes:
            raise InputError(f"ONNX model {self.path} gives {shape[1]} class scores but the model has {classes} "
                             f"classes, so its labels would be wrong; pass the model (run directory, or "
                             f"--num-classes {shape[1]}) the ONNX file was exported from")

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The network's outputs for the batch ``x`` (float32, NCHW)."""
        feed = {self.input_name: np.ascontiguousarray(x.detach().cpu().float().numpy())}
        outs = [torch.from_numpy(o) for o in self.session.run(None, feed)]
        if not self.is_detector:
            return outs[0] if len(outs) == 1 else outs  # type: ignore[return-value]
        named = dict(zip(self.output_names, outs))
        return ([named[n] for n in self.output_names if n.startswith("class_")],
                [named[n] for n in self.output_names if n.startswith("box_")])


def onnx_runner(model: nn.Module, input_size: int, *, threads: int | None = None,
                spin: bool = True) -> OnnxRunner:
    """``model`` exported (and verified) to a temporary file and loaded in ONNX Runtime: the
    fastest CPU path for every model we measured (README, Benchmarks)."""
    with tempfile.TemporaryDirectory(prefix="effml-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, input_size=input_size, dynamic_batch=True)
        runner = OnnxRunner(path, threads=threads, spin=spin)  # the session holds the graph in memory
    return runner
