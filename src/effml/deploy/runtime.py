"""Run an exported model as a drop-in for the PyTorch network it came from.

A runner takes and returns torch tensors in the network's own structure: one tensor for a
classifier, ``(class outputs per level, box outputs per level)`` for a detector (the exported
outputs ``class_*`` then ``box_*``, see ``onnx_export.default_output_names``). So
``DetectionPredictor``'s anchors, decoding and NMS run unchanged on a runtime's outputs.
``OnnxRunner`` runs an ONNX file in ONNX Runtime; ``effml.deploy.openvino_runtime.OpenVinoRunner``
runs the same graph (or its IR) in OpenVINO. ``GraphRunner`` is what they share.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from effml.deploy.onnx_export import export_onnx
from effml.errors import InputError
from effml.measure.onnx import onnx_session

Dim = int | str | None  # a static size, or a symbol / None where the dimension is dynamic
NetworkOutput = torch.Tensor | tuple[list[torch.Tensor], list[torch.Tensor]]


class GraphRunner:
    """An exported network with one image input, run by some runtime (``run_arrays``); called on a
    torch batch it gives the network's outputs in the network's own structure."""

    kind = "exported"  # names the file in errors: "ONNX model m.onnx", "OpenVINO model m.xml"

    def _describe(self, path: Path, input_shapes: Sequence[Sequence[Dim]],
                  outputs: Sequence[tuple[str, Sequence[Dim]]]) -> None:
        """Record the graph's one input shape ``[N, C, H, W]`` and its ``(name, shape)`` outputs."""
        self.path = path
        if len(input_shapes) != 1:
            raise InputError(f"{self.kind} model {path} has {len(input_shapes)} inputs; effml runs models "
                             f"with one image input (as `effml export` writes them)")
        self.input_shape = tuple(input_shapes[0])  # N may be a symbol
        self.output_names = tuple(name for name, _ in outputs)
        self.output_shapes = tuple(tuple(shape) for _, shape in outputs)
        self.is_detector = any(n.startswith("class_") for n in self.output_names)

    def check_input(self, channels: int, height: int, width: int) -> None:
        """Refuse, naming the file, an image size the graph was not exported for."""
        want = self.input_shape[1:]
        got = (channels, height, width)
        if any(isinstance(w, int) and w != g for w, g in zip(want, got)):
            raise InputError(f"{self.kind} model {self.path} takes input {'x'.join(map(str, want))} but the "
                             f"images are prepared as {'x'.join(map(str, got))}; export it at this size "
                             f"(effml export ... --input-size {height}) or pass --input-size "
                             f"{want[-1]}")

    def check_classes(self, classes: int) -> None:
        """Refuse, naming the file, a classifier whose logits are not the model's ``classes`` (the
        labels would name other classes)."""
        single = len(self.output_shapes) == 1 and not self.is_detector
        shape = self.output_shapes[0] if single else ()
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] != classes:
            raise InputError(f"{self.kind} model {self.path} gives {shape[1]} class scores but the model has "
                             f"{classes} classes, so its labels would be wrong; pass the model (run directory, "
                             f"or --num-classes {shape[1]}) the file was exported from")

    def run_arrays(self, x: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs, in its order, for a float32 NCHW array."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> NetworkOutput:
        """The network's outputs for the batch ``x`` (float32, NCHW)."""
        outs = [torch.from_numpy(o) for o in self.run_arrays(np.ascontiguousarray(x.detach().cpu().float().numpy()))]
        if not self.is_detector:
            return outs[0] if len(outs) == 1 else outs  # type: ignore[return-value]
        named = dict(zip(self.output_names, outs))
        return ([named[n] for n in self.output_names if n.startswith("class_")],
                [named[n] for n in self.output_names if n.startswith("box_")])


class OnnxRunner(GraphRunner):
    """``runner(x)``: the ONNX model at ``path`` run by ONNX Runtime on a torch batch."""

    kind = "ONNX"

    def __init__(self, path: str | Path, *, threads: int | None = None, spin: bool = True) -> None:
        self.session = onnx_session(path, threads=threads, spin=spin)
        inputs = self.session.get_inputs()
        self._describe(Path(path), [i.shape for i in inputs],
                       [(o.name, o.shape) for o in self.session.get_outputs()])
        self.input_name = inputs[0].name

    def run_arrays(self, x: np.ndarray) -> list[np.ndarray]:
        """The graph's outputs, in its order, for a float32 NCHW array."""
        return self.session.run(None, {self.input_name: x})


def onnx_runner(model: nn.Module, input_size: int, *, threads: int | None = None,
                spin: bool = True) -> OnnxRunner:
    """``model`` exported (and verified) to a temporary file and loaded in ONNX Runtime: the
    fastest CPU path for every model we measured (README, Benchmarks)."""
    with tempfile.TemporaryDirectory(prefix="effml-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, input_size=input_size, dynamic_batch=True)
        runner = OnnxRunner(path, threads=threads, spin=spin)  # the session holds the graph in memory
    return runner
