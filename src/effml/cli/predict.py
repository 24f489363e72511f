"""``effml predict``: top-k classes of images, with the preprocessing the weights expect."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from effml.cli._common import (
    FastOpt, InputSizeOpt, ModelArg, NumClassesOpt, OnnxRunOpt, WeightsOpt, echo, fast_network, load_model,
    parse_floats3,
)
from effml.errors import InputError

_CHUNK = 16  # images per forward pass


def predict(
    model: ModelArg,
    # readable=False: an unreadable image is reported and skipped below, not a usage error for all
    images: Annotated[list[Path], typer.Argument(help="Image files.", show_default=False, readable=False)],
    weights: WeightsOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Classes per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    num_classes: NumClassesOpt = None,
    input_size: InputSizeOpt = None,
    mean: Annotated[str | None, typer.Option(help="Override normalisation mean 'R,G,B'.")] = None,
    std: Annotated[str | None, typer.Option(help="Override normalisation std 'R,G,B'.")] = None,
    onnx: OnnxRunOpt = None,
    fast: FastOpt = False,
) -> None:
    """Classify images; unreadable files are reported and skipped (exit code 1 if any)."""
    import torch

    from effml.data import class_names, eval_transform, load_image
    from effml.data.transforms import max_image_pixels

    max_image_pixels()  # a bad EFFML_MAX_IMAGE_PIXELS is one error, not one per image
    means = parse_floats3(mean, "--mean") if mean is not None else None
    stds = parse_floats3(std, "--std", positive=True) if std is not None else None

    resolved = load_model(model, weights=weights, num_classes=num_classes, input_size=input_size,
                          task="classify")
    preprocess = replace(resolved.preprocess, mean=means or resolved.preprocess.mean,
                         std=stds or resolved.preprocess.std)
    transform = eval_transform(preprocess)
    net = resolved.net
    labels = resolved.classes or class_names(net.num_classes)
    k = min(top_k, net.num_classes)
    network = fast_network(net, preprocess.input_size, onnx, fast) or net

    results: list[dict[str, object]] = [{"image": str(path)} for path in images]
    failed = 0
    for start in range(0, len(images), _CHUNK):
        batch, slots = [], []
        for i in range(start, min(start + _CHUNK, len(images))):
            try:
                batch.append(transform(load_image(images[i])))
                slots.append(i)
            except InputError as e:
                failed += 1
                typer.echo(f"error: {e}", err=True)
                results[i]["error"] = str(e)
        if not batch:
            continue
        with torch.inference_mode():
            top = network(torch.stack(batch)).softmax(dim=-1).topk(k, dim=-1)
        for i, values, indices in zip(slots, top.values.tolist(), top.indices.tolist()):
            results[i]["predictions"] = [
                {"rank": r + 1, "index": c, "label": labels[c] if labels else str(c), "prob": p}
                for r, (p, c) in enumerate(zip(values, indices))
            ]

    if as_json:
        echo(json.dumps(results, indent=2))
    else:
        for r in results:
            if "predictions" not in r:
                continue
            echo(r["image"])
            for p in r["predictions"]:  # type: ignore[union-attr]
                echo(f"  {p['rank']:>2}  {p['prob']:.4f}  {p['label']} ({p['index']})")
    if failed:
        typer.echo(f"error: {failed} of {len(images)} image(s) could not be read", err=True)
        raise typer.Exit(1)
