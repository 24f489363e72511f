"""The int8 graph that effml ships: ONNX Runtime static quantization of an exported fp32 ONNX model.

One recipe for everything that makes an int8 model: ``effml export --int8`` (``effml.deploy.quantize``
writes it after checking it against fp32), ``effml bench`` and the latency that searches optimise
(``effml.measure.latency``, runtime ``int8``), so a search ranks the graph that will be shipped.

The recipe (``quantize_onnx``): ORT's pre-processing (shape inference, BN folding), then QDQ static
quantization with per-channel symmetric int8 weights and uint8 activations, calibrated by min/max
(or percentile / entropy) on the user's images. ORT's own int32-bias check widens a weight scale
where the folded bias would overflow.

``reduce_range`` (7-bit weights) is on by default on CPUs without VNNI. There, ORT's u8 x s8
kernels (vpmaddubsw) add pairs of products in saturating int16, and full-range weights overflow
it. Measured on this repository's AVX2 machine, EfficientNet-Lite1 on held-out photo crops:
top-1 agreement with fp32 68% at 8 bits, 88% with reduce_range. The same 8-bit model simulated
without the fused kernels reached 92%. With VNNI (or AMX), int8 dot products accumulate in int32
and full 8-bit weights are safe.

For latency alone the calibration images may be random (``random_calibration``): the ranges change
the int8 values, not which kernels run.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from effml.errors import InputError
from effml.measure.onnx import INPUT_NAME
# has_vnni lives with QAT (train, below measure), which simulates this recipe's weight grid
from effml.train.qat import has_vnni

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
CONFIDENT = 0.5  # fp32 top-1 probability above which an image counts as unambiguous
# The fewest calibration images each method is given. Percentile (99.99th) and entropy (KL) ranges
# come from the tails of each activation's histogram, which a few images do not fill: effml's rule
# of thumb, not a measured threshold (TFLite's and ORT's examples calibrate on 100 or more images).
# MinMax takes any number (fewer than 32 images warn, effml.deploy.calibration).
MIN_CALIBRATION_IMAGES = {"minmax": 1, "percentile": 32, "entropy": 32}
DQ_SUFFIX = "_DequantizeLinear_Output"  # ORT's name for a dequantized activation (qdq_quantizer)


def check_calibration_method(method: str) -> None:
    """Refuse a calibration method ORT's quantizer does not have."""
    if method not in CALIBRATION_METHODS:
        raise InputError(f"calibration method {method!r} is unknown; choose from {', '.join(CALIBRATION_METHODS)}")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's quantizer logs every weight-scale adjustment on the root logger; keep errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_onnx(fp32: str | Path, out: str | Path, calibration: torch.Tensor, *,
                  method: str = "minmax", reduce_range: bool | None = None, exclude: Sequence[str] = (),
                  ranges: str | Path | None = None, preprocessed: str | Path | None = None) -> None:
    """Write the int8 (QDQ) version of the fp32 ONNX model ``fp32`` to ``out``, calibrated on the
    images ``calibration`` ([N, C, H, W], preprocessed as the model expects).

    ``exclude``: nodes of the pre-processed graph left in fp32 (``int8_fallback``). ``ranges``: a
    JSON file of the calibrated activation ranges, written by the first call and read by the next
    ones (ORT's calibration cache), so that a retry with other nodes excluded skips calibration.
    ``preprocessed``: where to keep the pre-processed fp32 graph the quantizer read."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or not len(calibration):
        raise InputError(f"calibration images must be a non-empty [N, C, H, W] batch, got {tuple(calibration.shape)}")
    check_calibration_count(method, len(calibration))
    if reduce_range is None:
        reduce_range = not has_vnni()

    class Batches(CalibrationDataReader):
        # One image per call: the percentile and entropy collectors need equal shapes.
        def __init__(self) -> None:
            self.items = iter(calibration.split(1))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {INPUT_NAME: x.float().numpy()}

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    extra: dict[str, object] = {"CalibPercentile": 99.99} if method == "percentile" else {}
    if exclude:  # excluded nodes read float activations (keep_in_fp32), so their Relu/Clip must stay nodes
        extra["QDQKeepRemovableActivations"] = True
    with tempfile.TemporaryDirectory(prefix="effml-quant-") as tmp, _quiet():
        pre = Path(preprocessed) if preprocessed is not None else Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=methods[method], extra_options=extra,
                        nodes_to_exclude=list(exclude), calibration_cache_path=ranges)
    if exclude:
        keep_in_fp32(out, exclude)


def check_calibration_count(method: str, count: int, source: str = "the calibration set") -> None:
    """Refuse fewer calibration images than ``method`` needs (``MIN_CALIBRATION_IMAGES``), saying how
    many it needs and what to do."""
    check_calibration_method(method)
    need = MIN_CALIBRATION_IMAGES[method]
    if count < need:
        others = ", ".join(m for m, n in MIN_CALIBRATION_IMAGES.items() if n <= count)
        raise InputError(
            f"calibration method {method} needs at least {need} calibration images (it sets each activation's "
            f"range from the tail of its histogram over them); got {count} from {source}. Give {need} or more images "
            f"like the deployment data" + (f", or use --calibration-method {others}" if others else ""))


def top1_agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float | None, int]:
    """(top-1 agreement, agreement on images the reference is >= 50% sure of, their count)."""
    same = reference.argmax(1) == other.argmax(1)
    confident = reference.softmax(1).amax(1) >= CONFIDENT
    n = int(confident.sum())
    return float(same.float().mean()), (float(same[confident].float().mean()) if n else None), n


def int8_top1_agreement(model: torch.nn.Module, calibration: torch.Tensor, images: torch.Tensor, *,
                        threads: int = 1, batch: int = 64) -> float:
    """Top-1 agreement of a classifier's int8 model (this module's recipe, calibrated on
    ``calibration``) with its fp32 ONNX model on ``images``: what ``effml export --int8`` checks,
    without writing anything (a search's ``objective.int8_min_agreement``)."""
    from effml.measure.onnx import onnx_program, onnx_session

    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="effml-int8-agreement-") as tmp:
            fp32_path, int8_path = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            example = images[:2] if len(images) >= 2 else images.expand(2, *images.shape[1:])
            onnx_program(model, example.contiguous(), ["logits"]).save(fp32_path, external_data=False)
            quantize_onnx(fp32_path, int8_path, calibration)
            outputs = []
            for path in (fp32_path, int8_path):
                session = onnx_session(path, threads)
                outputs.append(torch.cat([torch.from_numpy(session.run(None, {INPUT_NAME: x.float().numpy()})[0])
                                          for x in images.split(batch)]))
    finally:
        model.train(was_training)
    return top1_agreement(outputs[0], outputs[1])[0]


def random_calibration(chw: Sequence[int], count: int = 8) -> torch.Tensor:
    """``count`` standard-normal images [count, C, H, W] (fixed seed): calibration for timing only."""
    return torch.randn(count, *chw, generator=torch.Generator().manual_seed(1))


def keep_in_fp32(path: str | Path, nodes: Sequence[str]) -> None:
    """Rewrite the int8 QDQ model at ``path`` so that ``nodes``, which the quantizer excluded, read
    their activations in fp32. ORT leaves an excluded node's input quantized when the node that
    produces it is quantized (its output gets a QuantizeLinear/DequantizeLinear pair for its other
    consumers), so the node would still see the int8 error. Each such input is wired to the float
    tensor again, and pairs that no node reads any more are removed. The model must have been
    quantized with its Relu/Clip nodes kept (ORT's ``QDQKeepRemovableActivations``): otherwise the
    float tensor is the convolution's output before its activation."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    floats = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    wanted = set(nodes)
    for node in graph.node:
        if node.name not in wanted:
            continue
        for i, name in enumerate(node.input):
            base = name[: -len(DQ_SUFFIX)] if name.endswith(DQ_SUFFIX) else None
            if base is not None and base in floats and base not in weights:
                node.input[i] = base
    outputs = {o.name for o in graph.output}
    while True:  # drop DequantizeLinear, then QuantizeLinear nodes whose outputs nothing reads
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    onnx.save(model, str(path))
