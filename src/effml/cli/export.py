"""``effml export``: ONNX export, verified against PyTorch with ONNX Runtime before it is kept (and,
with --openvino, the OpenVINO IR beside it, verified with OpenVINO)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from effml.cli._common import InputSizeOpt, NumClassesOpt, WeightsOpt, echo
from effml.errors import EffmlError


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
    atol: Annotated[float, typer.Option(min=0.0, help="Allowed |ORT - PyTorch|: atol + rtol x the largest output.")] = 1e-4,
    rtol: Annotated[float, typer.Option(min=0.0, help="See --atol (float32 rounding grows with the outputs).")] = 1e-5,
    int8: Annotated[bool, typer.Option(
        "--int8", help="Write an int8 model (ONNX Runtime static quantization, QDQ, per-channel "
                       "weights), only if it agrees with fp32 on held-out images.")] = False,
    calibration: Annotated[str | None, typer.Option(
        help="--int8: a folder of images like those the model will see, or 'embedded' (default: "
             "a run's validation images; the embedded digits/shapes for other models).")] = None,
    calibration_images: Annotated[int, typer.Option(min=1, help="--int8: images to calibrate on.")] = 128,
    holdout_images: Annotated[int, typer.Option(
        min=1, help="--int8: other images on which int8 is compared with fp32.")] = 128,
    min_agreement: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="--int8: refuse below this fraction (0-1): top-1 agreement (classifiers), "
                               "or AP50 / 100 against the fp32 detections (detectors).")] = 0.99,
    calibration_method: Annotated[str, typer.Option(
        help="--int8: minmax, percentile or entropy.")] = "minmax",
    reduce_range: Annotated[bool | None, typer.Option(
        "--reduce-range/--full-range", help="--int8: 7-bit weights (default: on CPUs without VNNI, "
                                            "where 8-bit weights overflow ORT's int16 sums).",
        show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="--int8: ONNX Runtime threads for the check.")] = None,
    fallback: Annotated[bool, typer.Option(
        "--fallback/--no-fallback", help="--int8: when int8 agrees too little, keep the layers whose "
                                         "quantization adds the most error in fp32 (1, 2, 4, ... 16 of them) "
                                         "until it agrees.")] = True,
    openvino: Annotated[bool, typer.Option(
        "--openvino", help="Also write the OpenVINO IR (fp32 weights) beside the ONNX file: model.xml + "
                           "model.bin, verified against PyTorch like the ONNX model. Needs the openvino "
                           "extra: pip install \"effml[openvino]\".")] = False,
) -> None:
    """Export a model to ONNX; the file is written only if ONNX Runtime matches PyTorch (within atol +
    rtol x the largest output).

    A classifier has one output, "logits". A detector (EfficientDet) is exported as the pure
    network, as effdet does: input "input" [N, 3, S, S] (letterboxed, normalised), outputs
    class_p3..class_pL [N, A*classes, S/2^l, S/2^l] (logits) then box_p3..box_pL [N, A*4, ...]
    (box deltas). Anchors, decoding and NMS are NOT in the graph: post-process outside it
    (effml.detection.postprocess with the model's anchors(h, w), or your runtime's NMS).
    """
    from effml.cli._common import load_model
    from effml.deploy import export_onnx

    if openvino:  # before anything is built or written: a missing install leaves every file as it was
        from effml.deploy.openvino_runtime import ir_paths
        from effml.measure.openvino import load_openvino

        if int8:
            raise EffmlError("--openvino writes the fp32 model as an OpenVINO IR; give it without --int8")
        load_openvino()
        ir_paths(onnx)
    resolved = load_model(model, weights=weights, num_classes=num_classes, input_size=input_size)
    net, size = resolved.net, resolved.preprocess.input_size
    if int8:
        _export_int8(resolved, onnx, calibration, calibration_images, holdout_images, min_agreement,
                     calibration_method, reduce_range, threads, fallback, atol, rtol)
        return
    report = export_onnx(net, onnx, input_size=size, batch_size=batch_size,
                         dynamic_batch=dynamic_batch, opset=opset, atol=atol, rtol=rtol)
    batch = "N" if report.dynamic_batch else str(report.input_shape[0])
    shape = "x".join([batch, *(str(d) for d in report.input_shape[1:])])
    echo(f"verified with ONNX Runtime: max abs diff {report.max_abs_diff:.3g} (atol {atol:g}, rtol {rtol:g})")
    echo(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, opset {report.opset}, input {shape})")
    if resolved.task == "detect":
        echo(f"outputs (pre-NMS, lowest level first): {', '.join(report.output_names)}; "
             f"anchors, box decoding and NMS are not in the graph")
    if openvino:
        from effml.deploy.openvino_runtime import export_openvino

        ir = export_openvino(net, report.path, batch_size=batch_size, atol=atol, rtol=rtol)
        echo(f"verified with OpenVINO: max abs diff {ir.max_abs_diff:.3g} (atol {atol:g}, rtol {rtol:g})")
        echo(f"wrote {ir.path} and {ir.weights.name} ({ir.size_bytes / 1e6:.1f} MB, OpenVINO IR, fp32 weights)")


def _export_int8(resolved, onnx: Path, calibration: str | None, calibration_images: int,
                 holdout_images: int, min_agreement: float, method: str, reduce_range: bool | None,
                 threads: int | None, fallback: bool, atol: float, rtol: float) -> None:
    from effml.cli._common import warn
    from effml.deploy import calibration as cal
    from effml.deploy.quantize import check_calibration_count, export_int8, qat_command

    check_calibration_count(method, calibration_images, "--calibration-images")  # before reading any image
    counts = {"calibration": calibration_images, "holdout": holdout_images}
    pre, task = resolved.preprocess, resolved.task
    if calibration not in (None, cal.EMBEDDED):
        images = cal.folder_images(calibration, pre, task, **counts)
    elif calibration is None and resolved.run_dir is not None:
        images = cal.run_images(resolved.run_dir, pre, **counts)
    else:
        if resolved.run_dir is None:
            warn("calibrating on the embedded data set: int8 of a model trained on other images will "
                 "disagree with fp32 on it; give --calibration FOLDER of images like your own")
        images = cal.embedded_images(pre, task, **counts)
    check_calibration_count(method, len(images.calibration), images.source)
    echo(f"calibrating on {len(images.calibration)} and checking on {len(images.holdout)} images "
         f"from {images.source}")
    qat = (qat_command(resolved.run_dir, resolved.weights)
           if resolved.run_dir is not None and task == "classify" else None)
    report = export_int8(resolved.net, onnx, input_size=pre.input_size, calibration=images.calibration,
                         holdout=images.holdout, min_agreement=min_agreement, method=method,
                         reduce_range=reduce_range, threads=threads, fallback=fallback, atol=atol, rtol=rtol,
                         qat_command=qat)
    echo(f"int8 {report.metric}: {report.agreement_text()} (required {min_agreement:.1%})")
    if report.fp32_layers:
        echo(report.fallback_text())
    echo(f"ONNX Runtime batch 1: fp32 {report.fp32_ms:.2f} ms, int8 {report.int8_ms:.2f} ms "
         f"({report.speedup:.2f}x); {'7-bit' if report.reduce_range else '8-bit'} weights")
    echo(f"wrote {report.path} ({report.size_bytes / 1e6:.1f} MB, fp32 {report.fp32_size_bytes / 1e6:.1f} MB)")
    if report.speedup < 1:  # e.g. EfficientNet-B0 (SE, swish) at batch 1 (README, Benchmarks)
        warn(f"int8 ran slower than fp32 on this CPU ({report.speedup:.2f}x at batch 1): ship the fp32 model "
             f"(effml export without --int8) unless its size matters more than its speed")
