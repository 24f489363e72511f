"""``effml detect``: boxes on images with a detector, drawn into copies and listed in one JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from effml.cli._common import FastOpt, NumClassesOpt, OnnxRunOpt, WeightsOpt, echo
from effml.errors import EffmlError, InputError

_CHUNK = 8  # images per forward pass
NUM_COCO_CLASSES = 90  # effdet / automl COCO heads: one output per COCO id 1..90
# One colour per class index (cycled): the tab10 palette, readable on photos.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def detect(
    model: Annotated[str, typer.Argument(
        help="Detection model name (tf_efficientdet_d0; `effml models --task detect` lists them), "
             "a detector spec JSON file, or a run directory written by `effml train` for detection.",
        show_default=False)],
    # readable=False: an unreadable image is reported and skipped below, not a usage error for all
    images: Annotated[list[Path], typer.Argument(help="Image files.", show_default=False, readable=False)],
    weights: WeightsOpt = None,
    num_classes: NumClassesOpt = None,
    input_size: Annotated[int | None, typer.Option(
        min=8, help="Letterbox size: long side resized to it, padded square (default: the model's).")] = None,
    score_threshold: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Drop detections scoring below this.")] = 0.3,
    iou_threshold: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Class-aware NMS IoU threshold.")] = 0.5,
    max_detections: Annotated[int, typer.Option(min=1, help="Detections kept per image.")] = 100,
    out_dir: Annotated[Path, typer.Option(
        "--out-dir", "-o", help="Where the annotated images and detections.json go.")] = Path("detections"),
    classes: Annotated[Path | None, typer.Option(
        "--classes", help="Text file of class names, one per line in label order (default: the "
                          "run's names; COCO names for 90-class models; else class_<index>).")] = None,
    onnx: OnnxRunOpt = None,
    fast: FastOpt = False,
) -> None:
    """Detect objects: one annotated PNG per image and detections.json (boxes in original pixels).

    Unreadable images are reported and skipped (exit code 1 if any).
    """
    from effml.data.transforms import max_image_pixels
    from effml.files import make_output_dir, os_error, remove_empty_dirs, remove_files

    max_image_pixels()  # a bad EFFML_MAX_IMAGE_PIXELS is one error, not one per image
    # The folder is made and tried before any work; if the command fails, what it wrote goes.
    created = make_output_dir(out_dir, "--out-dir")
    written: list[Path] = []
    try:
        failed = _detect(model, images, weights, num_classes, input_size, score_threshold, iou_threshold,
                         max_detections, out_dir, classes, written, onnx, fast)
    except typer.Exit:  # stdout closed (| head): the outputs written so far are kept
        raise
    except BaseException as e:  # full disk, an error, Ctrl-C: no half set of outputs is left
        remove_files(written)
        remove_empty_dirs(created)
        cause = _os_cause(e)
        if cause is not None:
            where = getattr(e, "effml_path", None) or out_dir
            note = (f"the {len(written)} file(s) this run had written were removed" if written
                    else "nothing was written")
            raise os_error(cause, "write", where, note=note) from None
        raise
    if failed:
        typer.echo(f"error: {failed} of {len(images)} image(s) could not be read", err=True)
        raise typer.Exit(1)


def _detect(model: str, images: list[Path], weights: Path | None, num_classes: int | None,
            input_size: int | None, score_threshold: float, iou_threshold: float, max_detections: int,
            out_dir: Path, classes: Path | None, written: list[Path], onnx: Path | None = None,
            fast: bool = False) -> int:
    """Run the detector over ``images``, write into ``out_dir`` (appending each file written to
    ``written``); returns how many images could not be read."""
    from effml.cli._common import fast_network, load_model
    from effml.data import load_image
    from effml.deploy.image_detector import ImageDetector
    from effml.files import atomic_write_text

    resolved = load_model(model, weights=weights, num_classes=num_classes, input_size=input_size,
                          task="detect")
    net, preprocess = resolved.net, resolved.preprocess
    names = _class_names(net.num_classes, resolved, classes)
    category_ids = _category_ids(net.num_classes, resolved)
    detector = ImageDetector(net, preprocess, fill=_fill(resolved), score_threshold=score_threshold,
                             iou_threshold=iou_threshold, max_detections=max_detections,
                             network=fast_network(net, preprocess.input_size, onnx, fast))

    results: list[dict[str, Any]] = [{"image": str(path)} for path in images]
    outputs = _output_names(images, out_dir)
    failed = 0
    for start in range(0, len(images), _CHUNK):
        slots, pictures = [], []
        for i in range(start, min(start + _CHUNK, len(images))):
            try:
                pictures.append(load_image(images[i]))
                slots.append(i)
            except InputError as e:
                failed += 1
                typer.echo(f"error: {e}", err=True)
                results[i]["error"] = str(e)
        for i, picture, det in zip(slots, pictures, detector(pictures)):
            rows = []
            for box, score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
                rows.append({"box": [round(v, 2) for v in box], "score": round(score, 5), "label": label,
                             "class": names[label],
                             "category_id": category_ids[label] if category_ids else None})
            _write(outputs[i], written, _save_annotated, picture, det.boxes, rows, outputs[i])
            results[i].update({"width": picture.width, "height": picture.height, "annotated": str(outputs[i]),
                               "detections": rows})
            _print_table(results[i])

    json_path = out_dir / "detections.json"
    _write(json_path, written, atomic_write_text, json_path, json.dumps(results, indent=2) + "\n")
    done = len(images) - failed
    echo(f"wrote {done} annotated image(s) and {json_path}")
    return failed


def _os_cause(e: BaseException) -> OSError | None:
    """The ``OSError`` behind ``e``: ``e`` itself, or the one an ``InputError`` was raised from
    (the atomic writers turn a full disk into an ``InputError`` naming the file)."""
    if isinstance(e, OSError):
        return e
    if isinstance(e, InputError) and isinstance(e.__cause__, OSError):
        return e.__cause__
    return None


def _write(path: Path, written: list[Path], write: Any, *args: Any) -> None:
    """``write(*args)``, recording ``path`` as written, or on failure ``path`` (as ``effml_path``)."""
    try:
        write(*args)
    except (OSError, InputError) as e:
        e.effml_path = path  # type: ignore[attr-defined]
        raise
    written.append(path)


def coco_class_names() -> tuple[str, ...]:
    """Names of COCO category ids 1..90 in label order (label = id - 1), from the copy torchvision
    ships in its detection weights' metadata (no download); ids COCO leaves unused get 'class_<label>'."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    categories = FasterRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"]  # index = COCO id
    return tuple(name if name != "N/A" else f"class_{cid - 1}"
                 for cid, name in enumerate(categories) if cid >= 1)


def _class_names(num_classes: int, resolved: Any, classes_file: Path | None) -> tuple[str, ...]:
    if classes_file is not None:
        try:
            lines = classes_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read --classes file {classes_file}: {e}") from None
        names = tuple(line.strip() for line in lines if line.strip())
        if len(names) != num_classes:
            raise InputError(f"--classes file {classes_file} has {len(names)} names but the model "
                             f"predicts {num_classes} classes; give one name per line, in label order")
        return names
    if resolved.classes and len(resolved.classes) == num_classes:
        return tuple(resolved.classes)
    if num_classes == NUM_COCO_CLASSES and resolved.source != "run":
        return coco_class_names()
    return tuple(f"class_{i}" for i in range(num_classes))


def _category_ids(num_classes: int, resolved: Any) -> tuple[int, ...]:
    if resolved.category_ids and len(resolved.category_ids) == num_classes:
        return tuple(resolved.category_ids)
    if num_classes == NUM_COCO_CLASSES and resolved.source != "run":
        return tuple(range(1, NUM_COCO_CLASSES + 1))
    return ()


def _fill(resolved: Any) -> int | str:
    """The letterbox padding the run was evaluated with (default: the mean colour, automl's 0)."""
    if resolved.run_dir is not None and (resolved.run_dir / "config.yaml").is_file():
        from effml.train.config import load_config

        try:
            return 0 if load_config(resolved.run_dir / "config.yaml", saved=True).detect.fill == "black" else "mean"
        except EffmlError:
            pass
    return "mean"


def _output_names(images: list[Path], out_dir: Path) -> list[Path]:
    """One ``<stem>.png`` per input; repeated stems (a/x.jpg, b/x.png) get ``_1``, ``_2``..."""
    used: set[str] = set()
    paths = []
    for path in images:
        stem, n = path.stem or "image", 0
        name = f"{stem}.png"
        while name in used or name == "detections.json":
            n += 1
            name = f"{stem}_{n}.png"
        used.add(name)
        paths.append(out_dir / name)
    return paths


def _save_annotated(picture: Any, boxes: Any, rows: list[dict], path: Path) -> None:
    import torch
    from torchvision.transforms.v2 import functional as F
    from torchvision.utils import draw_bounding_boxes

    from effml.files import atomic_write_bytes

    pixels = F.pil_to_tensor(picture)
    if rows:
        width = max(1, round(max(picture.size) / 300))
        pixels = draw_bounding_boxes(
            pixels, boxes.reshape(-1, 4).to(torch.float32),
            labels=[f"{r['class']} {r['score']:.2f}" for r in rows],
            colors=[_PALETTE[r["label"] % len(_PALETTE)] for r in rows], width=width)
    image = F.to_pil_image(pixels)
    atomic_write_bytes(path, lambda f: image.save(f, format="PNG"))


def _print_table(result: dict[str, Any]) -> None:
    dets = result["detections"]
    echo(f"{result['image']} ({result['width']}x{result['height']}): {len(dets)} detection(s) "
         f"-> {result['annotated']}")
    if dets:
        width = max(len(d["class"]) for d in dets)
        echo(f"  {'score':>6}  {'class':<{width}}  box (x1, y1, x2, y2)")
        for d in dets:
            box = ", ".join(f"{v:.1f}" for v in d["box"])
            echo(f"  {d['score']:>6.3f}  {d['class']:<{width}}  ({box})")
