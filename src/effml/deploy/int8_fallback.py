"""Per-layer fp32 fallback for int8: find the layers whose quantization adds the most error, and
keep them in fp32.

The error is measured on the calibration images, without labels. Both graphs run with every
quantized activation exposed as an output: the pre-processed fp32 graph that ORT's quantizer reads
(``quantize_onnx(preprocessed=...)``), and its int8 QDQ model. An activation's error is its
noise-to-signal ratio, ||int8 - fp32||^2 / ||fp32||^2, summed over the images. The int8 value is
taken after its QuantizeLinear/DequantizeLinear pair, because ORT folds a Relu/Clip that follows a
conv into that pair's range. A layer's own share is the error of its output minus the largest error
among its quantized inputs. That is the per-layer sensitivity analysis of Nagel et al., "A White
Paper on Neural Network Quantization" (arXiv 2106.08295, section 4.8, "debugging"), done by
difference in a single pass instead of one pass per quantized layer.

``export_int8`` (``effml export --int8``) keeps the layers with the largest shares in fp32, the
worst 1, 2, 4, ... of them. It stops at the first int8 model that agrees with fp32 well enough
(``FALLBACK_STEPS``). Its report names the layers it kept in fp32 and the share that each one added.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from effml.measure.int8 import DQ_SUFFIX
from effml.measure.onnx import INPUT_NAME, onnx_session
FALLBACK_STEPS = (1, 2, 4, 8, 16)  # how many of the worst layers to keep in fp32, tried in turn


@dataclass(frozen=True)
class LayerError:
    """How much error one quantized node adds (noise-to-signal ratios, on the calibration images)."""

    node: str  # the node's name in the pre-processed graph: what ORT's ``nodes_to_exclude`` takes
    op_type: str
    output: str
    nsr: float  # of its dequantized output against fp32
    added: float  # ``nsr`` minus the largest ``nsr`` among its quantized inputs


@contextlib.contextmanager
def _session_with_outputs(model_path: Path, names: list[str], threads: int | None) -> Iterator[object]:
    """An ONNX Runtime session of the model at ``model_path`` with the tensors ``names`` exposed as
    extra graph outputs (it runs a temporary copy)."""
    import onnx

    model = onnx.load(str(model_path))
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in present)
    with tempfile.TemporaryDirectory(prefix="effml-sensitivity-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        yield onnx_session(path, threads=threads)


def layer_errors(preprocessed: str | Path, int8: str | Path, images: torch.Tensor, *, batch: int = 16,
                 threads: int | None = None) -> list[LayerError]:
    """Every quantized node of the int8 QDQ model ``int8`` whose output is quantized, with the error
    it adds, worst first. ``preprocessed`` is the fp32 graph it was quantized from; ``images`` are
    preprocessed as the model expects (the calibration images: no labels are needed)."""
    import onnx

    graph = onnx.load(str(int8), load_external_data=False).graph
    reference = {o for n in onnx.load(str(preprocessed), load_external_data=False).graph.node for o in n.output}
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    # activations: a dequantized tensor X_DequantizeLinear_Output whose float X the fp32 graph also has
    source = {d: d[: -len(DQ_SUFFIX)] for d in dequantized
              if d.endswith(DQ_SUFFIX) and d[: -len(DQ_SUFFIX)] in reference | {INPUT_NAME}}
    activations = sorted(source)
    inner = [source[a] for a in activations if source[a] != INPUT_NAME]
    noise = dict.fromkeys(activations, 0.0)
    signal = dict.fromkeys(activations, 0.0)
    with _session_with_outputs(Path(preprocessed), inner, threads) as fp32, \
            _session_with_outputs(Path(int8), activations, threads) as quantized:
        for x in images.split(batch):  # sums per batch: the activations of all images need not fit
            feed = {INPUT_NAME: x.float().numpy()}
            ref = dict(zip(inner, fp32.run(inner, feed)))  # type: ignore[attr-defined]
            ref[INPUT_NAME] = feed[INPUT_NAME]
            for a, got in zip(activations, quantized.run(activations, feed)):  # type: ignore[attr-defined]
                want = ref[source[a]].astype(np.float64)
                noise[a] += float(np.sum((got - want) ** 2))
                signal[a] += float(np.sum(want * want))
    nsr = {source[a]: noise[a] / signal[a] if signal[a] > 0 else 0.0 for a in activations}
    errors = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.output:
            continue
        out = node.output[0]
        if out not in nsr:
            continue  # its output is not quantized (or not in the fp32 graph): nothing to compare
        inputs = [nsr[source[i]] for i in node.input if i in source]
        errors.append(LayerError(node.name, node.op_type, out, nsr[out], nsr[out] - max(inputs, default=0.0)))
    return sorted(errors, key=lambda e: e.added, reverse=True)
