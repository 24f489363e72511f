"""``effml export``: ONNX export, verified against PyTorch with ONNX Runtime before it is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from effml.cli._common import InputSizeOpt, ModelArg, NumClassesOpt, WeightsOpt, warn_random_weights


def export(
    model: ModelArg,
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
    """Export a model to ONNX; the file is written only if ONNX Runtime matches PyTorch within atol."""
    from effml.deploy import export_onnx
    from effml.models import create_model, get_entry

    from effml.train.run_dir import is_run_dir, load_run

    if is_run_dir(model) and weights is None:
        trained = load_run(model)
        net, size = trained.model, input_size or trained.preprocess.input_size
    else:
        size = input_size or get_entry(model).preprocess.input_size
        net = create_model(model, num_classes=num_classes, weights=weights)
        if weights is None:
            warn_random_weights(model)
    report = export_onnx(net, onnx, input_size=size, batch_size=batch_size,
                         dynamic_batch=dynamic_batch, opset=opset, atol=atol)
    batch = "N" if report.dynamic_batch else str(report.input_shape[0])
    shape = "x".join([batch, *(str(d) for d in report.input_shape[1:])])
    typer.echo(f"verified with ONNX Runtime: max abs diff {report.max_abs_diff:.3g} (atol {atol:g})")
    typer.echo(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset}, input {shape})")
