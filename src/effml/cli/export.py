"""``effml export``: ONNX export, verified against PyTorch with ONNX Runtime before it is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from effml.cli._common import InputSizeOpt, NumClassesOpt, WeightsOpt, echo


def export(
    model: Annotated[str, typer.Argument(
        help="Model name (efficientnet_b0, tf_efficientdet_d0; with a weight tag: "
             "tf_efficientnet_b0.ap_in1k), a spec JSON file, or a run directory written by `effml train`.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="Output .onnx file.")],
    weights: WeightsOpt = None,
    input_size: InputSizeOpt = None,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Batch of the verification input (the fixed batch with --static-batch).")] = 1,
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch/--static-batch", help="Symbolic or fixed batch dimension.")] = True,
    num_classes: NumClassesOpt = None,
    opset: Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's).")] = None,
    atol: Annotated[float, typer.Option(min=0.0, help="Largest allowed |ORT - PyTorch|.")] = 1e-4,
) -> None:
    """Export a model to ONNX; the file is written only if ONNX Runtime matches PyTorch within atol.

    A classifier has one output, "logits". A detector (EfficientDet) is exported as the pure
    network, as effdet does: input "input" [N, 3, S, S] (letterboxed, normalised), outputs
    class_p3..class_pL [N, A*classes, S/2^l, S/2^l] (logits) then box_p3..box_pL [N, A*4, ...]
    (box deltas). Anchors, decoding and NMS are NOT in the graph: post-process outside it
    (effml.detection.postprocess with the model's anchors(h, w), or your runtime's NMS).
    """
    from effml.cli._common import resolve_model
    from effml.deploy import export_onnx

    resolved = resolve_model(model, weights=weights, num_classes=num_classes, input_size=input_size)
    net, size = resolved.net, resolved.preprocess.input_size
    report = export_onnx(net, onnx, input_size=size, batch_size=batch_size,
                         dynamic_batch=dynamic_batch, opset=opset, atol=atol)
    batch = "N" if report.dynamic_batch else str(report.input_shape[0])
    shape = "x".join([batch, *(str(d) for d in report.input_shape[1:])])
    echo(f"verified with ONNX Runtime: max abs diff {report.max_abs_diff:.3g} (atol {atol:g})")
    echo(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset}, input {shape})")
    if resolved.task == "detect":
        echo(f"outputs (pre-NMS, lowest level first): {', '.join(report.output_names)}; "
             f"anchors, box decoding and NMS are not in the graph")
