"""Detection proxies for a backbone search: every sampled backbone wrapped into a detector,
trained on a detection data set and scored by COCO AP on the held-out training images.

MobileDets (Xiong et al., arXiv 2004.14525) searches backbones inside SSDLite, for COCO mAP and
the latency of the whole detector (head fixed); here ``search.detector: ssdlite`` turns each
sample (a ``NetworkSpec`` from any space: ``mobiledet``, ``mnasnet``, ...) into an
``SSDLiteSpec`` on it, for the data's classes at the searched resolution, with the SSDLite
configs' extra maps (``EXTRA_DEPTHS``). That detector spec is what a trial trains, measures and
records, so ``effml search export`` writes a detector that ``effml train`` trains as it is.

SpineNet (Du et al., arXiv 1912.05027) searched the backbone's block table inside RetinaNet: the
``spinenet`` space's members are RetinaNet specs already, and ``search.detector: retinanet`` says so.
"""

from __future__ import annotations

from typing import Any

from effml.detection.retinanet import RetinaNetSpec
from effml.detection.ssdlite import EXTRA_DEPTHS, SSDLiteSpec
from effml.errors import SearchError
from effml.search.study.config import SearchConfig
from effml.train.data import DETECTION_DATASETS

DETECTORS = ("ssdlite", "retinanet")
DETECTION_METRICS = ("AP", "AP50", "AP75")  # COCO box AP (percent), as the detection task reports them


def detector_spec(kind: str, backbone: Any) -> SSDLiteSpec | RetinaNetSpec:
    """The detector ``kind`` on ``backbone``: its classes (``num_classes``) at its ``resolution``;
    SSDLite taps C4 and C5 and adds the four extra maps of the SSDLite configs. A ``retinanet``
    sample (the ``spinenet`` space) is the detector already."""
    if kind not in DETECTORS:
        raise SearchError(f"search.detector={kind!r} is unknown; detectors are {list(DETECTORS)} (or null "
                          f"for classification)")
    if isinstance(backbone, RetinaNetSpec) != (kind == "retinanet"):
        raise SearchError(f"search.detector={kind} does not fit the space: the spinenet space gives RetinaNet "
                          f"detectors (search.detector=retinanet), the other spaces backbones for "
                          f"search.detector=ssdlite")
    if kind == "retinanet":
        return backbone
    return SSDLiteSpec(backbone=backbone, extra_depths=EXTRA_DEPTHS, num_classes=backbone.num_classes,
                       resolution=backbone.resolution)


def search_network(cfg: SearchConfig, spec: Any) -> Any:
    """What a trial of ``cfg`` trains for the sampled ``spec``: the spec itself (classification)
    or the ``search.detector`` built on it."""
    return spec if cfg.search.detector is None else detector_spec(cfg.search.detector, spec)


def score_metric(cfg: SearchConfig) -> str:
    """The evaluation metric a trial is scored on: ``objective.metric``, by default top-1 for
    classification and AP50 for a detector."""
    if cfg.objective.metric is not None:
        return cfg.objective.metric
    return "top1" if cfg.search.detector is None else "AP50"


def score(metrics: dict[str, Any] | None, metric: str) -> float:
    """``metric`` of an evaluation (top-1 or COCO AP, both reported in percent) as the search's
    ACC, a fraction in [0, 1]: MnasNet's reward ACC * (LAT / T)^w (arXiv 1807.11626, eq. 2) and
    TuNAS's Q(y) (arXiv 2008.06120) take accuracy as a fraction. NaN when it was not evaluated."""
    if not metrics or metric not in metrics:
        return float("nan")
    return float(metrics[metric]) / 100


def check_task(cfg: SearchConfig) -> None:
    """The searched networks, the proxy data set, the metric and the latency model agree."""
    detector, dataset, o = cfg.search.detector, cfg.proxy.data.dataset, cfg.objective
    if detector is not None and dataset not in DETECTION_DATASETS:
        raise SearchError(f"search.detector={detector} searches detection backbones, but proxy.data.dataset="
                          f"{dataset} is a classification data set; use a detection data set "
                          f"({', '.join(DETECTION_DATASETS)}) or search.detector=null")
    if detector is None and dataset in DETECTION_DATASETS:
        raise SearchError(f"proxy.data.dataset={dataset} is a detection data set, but search.detector is null "
                          f"(classifiers); set search.detector=ssdlite to search detection backbones")
    metric = score_metric(cfg)
    if detector is not None and metric not in DETECTION_METRICS:
        raise SearchError(f"objective.metric={metric} is a classification metric; a detector is scored by "
                          f"one of {list(DETECTION_METRICS)} (default AP50)")
    if detector is None and metric != "top1":
        raise SearchError(f"objective.metric={metric} scores detectors; set search.detector=ssdlite, or "
                          f"objective.metric=top1 (the default) for classification")
    if detector is not None and o.latency == "table":
        raise SearchError("objective.latency=table predicts a backbone's latency from its layers, not a "
                          "detector's; with search.detector use objective.latency=measured or flops")
