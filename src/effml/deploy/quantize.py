"""int8 ONNX models by ONNX Runtime static quantization, kept only if they agree with fp32.

The recipe (``quantize_onnx``, ``reduce_range`` on CPUs without VNNI) is in ``effml.measure.int8``,
shared with latency measurement.

``export_int8`` exports fp32, quantizes, and compares int8 against fp32 on held-out images.
Classifiers are compared by top-1 agreement. Detectors are compared by AP50 of the int8
detections against the fp32 ones as ground truth, as a fraction (AP50 / 100). It refuses, writing
nothing, a model below ``min_agreement``, a fraction 0..1 for both kinds.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from effml.deploy.int8_fallback import FALLBACK_STEPS, LayerError, layer_errors
from effml.deploy.onnx_export import export_onnx, prepare_output
from effml.deploy.runtime import OnnxRunner
from effml.errors import EffmlError, ExportError, InputError
from effml.files import fsync_dir, fsync_file, os_error, remove_empty_dirs
from effml.measure.int8 import (  # noqa: F401  (has_vnni and quantize_onnx: re-exported)
    CONFIDENT,
    check_calibration_count,
    has_vnni,
    quantize_onnx,
    top1_agreement,
)
from effml.measure.latency import time_interleaved

DEFAULT_MIN_AGREEMENT = 0.99
DETECTION_GT_SCORE = 0.3  # fp32 detections at or above this score are the reference boxes
QAT_EPOCHS, QAT_LR_FACTOR = 1, 0.1  # the quantization-aware fine-tuning a refusal proposes (qat_command)


@dataclass(frozen=True)
class Int8Report:
    """What ``export_int8`` measured (and wrote, when ``written``)."""

    path: Path
    written: bool
    metric: str  # "top-1 agreement" or "AP50 vs fp32 detections"
    agreement: float  # a fraction 0..1 (a detector's AP50 / 100), printed as a percentage
    min_agreement: float
    holdout_images: int
    calibration_images: int
    confident_agreement: float | None  # classifiers: on images fp32 is >= 50% sure of
    confident_images: int
    fp32_ms: float  # ONNX Runtime, batch 1, median
    int8_ms: float
    speedup: float
    reduce_range: bool
    method: str
    size_bytes: int
    fp32_size_bytes: int
    # the per-layer fallback (int8_fallback): the layers kept in fp32, worst first, and every try
    fp32_layers: tuple[LayerError, ...] = ()
    tries: tuple[tuple[int, float], ...] = ()  # (layers kept in fp32, agreement); the first try keeps none

    def agreement_text(self) -> str:
        """The agreement, with the unambiguous images' figure where there is one."""
        confident = (f" ({self.confident_agreement:.1%} on the {self.confident_images} images fp32 is "
                     f">= {CONFIDENT:.0%} sure of)" if self.confident_agreement is not None else "")
        return f"{self.agreement:.1%}{confident}"

    def fallback_text(self) -> str:
        """Which layers stayed in fp32 and why (empty when none did)."""
        if not self.fp32_layers:
            return ""
        tried = ", ".join(f"{k} layer{'s' * (k != 1)} {a:.1%}" for k, a in self.tries)
        layers = "; ".join(f"{e.node} ({e.op_type}, adds noise-to-signal {e.added:.2g})" for e in self.fp32_layers)
        n = len(self.fp32_layers)
        return (f"kept in fp32 ({n} layer{'s' * (n != 1)}, those whose quantization adds the most error on the "
                f"calibration images): {layers}. Agreement by layers kept in fp32: {tried}")

    def as_dict(self) -> dict[str, object]:
        """The report as a JSON-ready dict."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def ap50_against(reference: list, other: list, num_classes: int, height: int, width: int) -> float:
    """AP50 of the detections ``other`` with the detections ``reference`` (score >= 0.3) as the
    ground truth, as a fraction 0..1 like top-1 agreement; 1.0 when neither has a box."""
    from effml.detection.coco_eval import evaluate_detections

    images, annotations = [], []
    for i, det in enumerate(reference):
        images.append({"id": i, "width": width, "height": height})
        keep = det.scores >= DETECTION_GT_SCORE
        for box, label in zip(det.boxes[keep].tolist(), det.labels[keep].tolist()):
            x0, y0, x1, y1 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    if not annotations:
        return 1.0 if all(len(d) == 0 for d in other) else 0.0
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": c, "name": str(c)} for c in range(num_classes)]}
    dets = [(i, d.boxes, d.scores, d.labels) for i, d in enumerate(other)]
    # COCO AP is in percent; the agreement (and min_agreement, which the CLI's --min-agreement
    # takes for classifiers and detectors alike) is a fraction.
    return evaluate_detections(gt, dets, category_ids=list(range(num_classes)))["AP50"] / 100


def _outputs(model: nn.Module, runner: OnnxRunner, images: torch.Tensor, batch: int = 16) -> object:
    """Logits [N, classes] of a classifier, or per-image Detections of a detector (post-processed
    by the PyTorch model's own anchors and NMS)."""
    if runner.is_detector:
        from effml.detection.predictor import DetectionPredictor

        predictor = DetectionPredictor(model, network=runner)
        return [d for chunk in images.split(batch) for d in predictor(chunk)]
    return torch.cat([runner(chunk) for chunk in images.split(batch)])


def export_int8(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: int,
    calibration: torch.Tensor,
    holdout: torch.Tensor,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    method: str = "minmax",
    reduce_range: bool | None = None,
    threads: int | None = None,
    fallback: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    qat_command: str | None = None,
) -> Int8Report:
    """Export ``model`` as an int8 ONNX model at ``path`` if it agrees with fp32 on ``holdout``.

    ``fallback``: when the fully quantized model agrees too little, keep the layers whose
    quantization adds the most error in fp32, 1, 2, 4, ... of them (``int8_fallback``), until it
    agrees. Raises ``ExportError`` (nothing written) when the agreement stays below
    ``min_agreement``; the message gives the measured figures. Speed is ORT fp32 vs int8 at batch 1
    on this machine. ``atol``, ``rtol``: the fp32 export's check against PyTorch (``export_onnx``).
    ``qat_command``: the command that fine-tunes the model for int8 (``qat_command``), which a
    refusal names as the next step.
    """
    if not 0.0 <= min_agreement <= 1.0:
        raise InputError(f"min_agreement must be in [0, 1], got {min_agreement}")
    for what, images in (("calibration", calibration), ("held-out", holdout)):
        if images.ndim != 4 or not len(images):
            raise InputError(f"{what} images must be a non-empty [N, C, H, W] batch, got {tuple(images.shape)}")
    check_calibration_count(method, len(calibration))
    if reduce_range is None:
        reduce_range = not has_vnni()
    final = Path(path)
    created = prepare_output(final)
    model = model.eval()
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        fp32_path, int8_path = tmpdir / "fp32.onnx", tmpdir / final.name
        export_onnx(model, fp32_path, input_size=input_size, dynamic_batch=True, atol=atol, rtol=rtol)
        fp32 = OnnxRunner(fp32_path, threads=threads)
        ref = _outputs(model, fp32, holdout)
        metric = "AP50 vs fp32 detections" if fp32.is_detector else "top-1 agreement"

        def quantize_and_compare(kept: Sequence[LayerError] = ()) -> tuple[OnnxRunner, float, float | None, int]:
            quantize_onnx(fp32_path, int8_path, calibration, method=method, reduce_range=reduce_range,
                          exclude=[e.node for e in kept], ranges=tmpdir / "ranges.json",
                          preprocessed=tmpdir / "pre.onnx")
            runner = OnnxRunner(int8_path, threads=threads)
            got = _outputs(model, runner, holdout)
            if fp32.is_detector:
                return runner, ap50_against(ref, got, model.num_classes, *holdout.shape[-2:]), None, 0  # type: ignore[arg-type]
            return runner, *top1_agreement(ref, got)  # type: ignore[arg-type]

        int8, agreement, confident, n_confident = quantize_and_compare()
        tries, kept = [(0, agreement)], ()
        if fallback and agreement < min_agreement:
            ranked = layer_errors(tmpdir / "pre.onnx", int8_path, calibration, threads=threads)
            for k in (k for k in FALLBACK_STEPS if k < len(ranked)):
                kept = tuple(ranked[:k])
                int8, agreement, confident, n_confident = quantize_and_compare(kept)
                tries.append((k, agreement))
                if agreement >= min_agreement:
                    break
        x1 = holdout[:1]
        fp32_ms, int8_ms = (statistics.median(t) for t in time_interleaved(
            [lambda: fp32(x1), lambda: int8(x1)], warmup=3, rounds=20))
        ok = agreement >= min_agreement
        report = Int8Report(
            path=final, written=ok, metric=metric, agreement=agreement, min_agreement=min_agreement,
            holdout_images=len(holdout), calibration_images=len(calibration),
            confident_agreement=confident, confident_images=n_confident, fp32_ms=fp32_ms, int8_ms=int8_ms,
            speedup=fp32_ms / int8_ms, reduce_range=reduce_range, method=method,
            size_bytes=int8_path.stat().st_size, fp32_size_bytes=fp32_path.stat().st_size,
            fp32_layers=kept, tries=tuple(tries),
        )
        if not ok:
            raise Int8RefusedError(report, qat_command)
        fsync_file(int8_path)
        os.replace(int8_path, final)
        fsync_dir(final.parent)
        return report
    except OSError as e:
        shutil.rmtree(tmpdir, ignore_errors=True)
        remove_empty_dirs(created)
        raise os_error(e, "write the int8 ONNX model", final, note="nothing was written") from None
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        remove_empty_dirs(created)
        raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


class Int8RefusedError(ExportError):
    """The int8 model disagreed with fp32 more than allowed; ``report`` holds the figures.
    ``qat_command``: the quantization-aware fine-tuning to try next, named in the message."""

    def __init__(self, report: Int8Report, qat_command: str | None = None) -> None:
        self.report = report
        self.qat_command = qat_command
        r = report
        super().__init__(
            f"int8 {r.metric} with fp32 on {r.holdout_images} held-out images is {r.agreement_text()}, below the "
            f"required {r.min_agreement:.1%}; nothing was written to {r.path}. "
            + (f"With up to {r.tries[-1][0]} layers kept in fp32 it reached "
               f"{', '.join(f'{a:.1%} ({k})' for k, a in r.tries)} (the number of layers in brackets). "
               if len(r.tries) > 1 else "")
            + f"int8 ran {r.speedup:.2f}x ONNX Runtime fp32 at batch 1. Calibrate on more images like "
            f"the deployment data, try --calibration-method percentile, or accept this with "
            f"--min-agreement {max(r.agreement - 0.005, 0.0):.3f}"
            + (f". If post-training quantization stays short, fine-tune the run for int8 (quantization-aware "
               f"training, effml.train.qat), then export the new run with --int8: {qat_command}"
               if qat_command else ""))


def qat_command(run_dir: str | Path, weights: str | Path | None = None) -> str | None:
    """The ``effml train`` command that fine-tunes a classifier run for int8 (``train.qat``) from
    ``weights`` (default: the run's shipped weights), into ``RUN-qat`` beside it; None when the run
    has no plain training config to start from."""
    import shlex

    from effml.train.config import load_config
    from effml.train.run_dir import read_run_info, weights_file

    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    try:
        cfg = load_config(config)
        weights = weights if weights is not None else weights_file(run_dir, read_run_info(run_dir))
    except (EffmlError, OSError, ValueError):
        return None
    out = run_dir.with_name(run_dir.name + "-qat")
    # one epoch at a tenth of the run's peak rate, no warm-up: a fine-tuning, not a new training
    lr = QAT_LR_FACTOR * cfg.optim.lr
    return (f"effml train {shlex.quote(str(config))} model.weights={shlex.quote(str(weights))} "
            f"run.dir={shlex.quote(str(out))} train.qat=true train.epochs={QAT_EPOCHS} "
            f"schedule.warmup_epochs=0 optim.lr={lr:.3g}")
