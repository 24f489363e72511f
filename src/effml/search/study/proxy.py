"""A trial's score: the sampled network's (or the detector on it) MACs, latency and reward around
its accuracy, which comes from a source: the proxy training here (trained on the proxy task through
the Trainer, scored by top-1, or a detector's AP50, on held-out images), or a trained supernet
(``supernet_proxy.py``, ``objective.accuracy=supernet``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from effml.errors import SearchError
from effml.search.spaces.search_space import Sample
from effml.search.study.config import SearchConfig
from effml.search.study.cost import LatencyModel, spec_cost
from effml.search.study.detection_proxy import check_task, score, score_metric
from effml.search.study.reward import mnasnet_reward, reward_exponents


@dataclass
class TrialOutcome:
    """What one trial measured: the objective values and every metric recorded with the trial."""

    values: list[float]
    metrics: dict[str, Any]
    duration_s: float
    pruned: bool = False
    history: list[float] = field(default_factory=list)  # per-epoch accuracy or AP (what the pruner saw)


# Reports a per-epoch accuracy (epoch, value) to the strategy; True: the trial should stop.
Reporter = Callable[[int, float], bool]


def proxy_config(cfg: SearchConfig, sample: Sample, seed: int) -> Any:
    """The proxy training of one trial: the search's ``proxy`` section with the sample's
    hyper-parameters (typed values), the input size of its spec, the trial's seed and the worker's
    threads."""
    from effml.train.config import config_from_dict

    changes: dict[str, Any] = {}
    for key, value in sample.hyper.items():
        *sections, name = key.split(".")
        section = changes
        for part in sections:
            section = section.setdefault(part, {})
        section[name] = value
    changes.setdefault("data", {})["image_size"] = sample.spec.resolution  # the trial's own, whatever the space says
    changes.setdefault("train", {}).update(seed=seed, threads=cfg.search.threads)
    return config_from_dict(changes, cfg.proxy, source="the sampled hyper-parameters")


def check_proxy(cfg: SearchConfig) -> None:
    """The proxy can score what the objective asks for, on the task the searched networks have."""
    check_task(cfg)
    if cfg.objective.int8_min_agreement is not None and (cfg.search.detector or cfg.objective.accuracy == "supernet"):
        raise SearchError("objective.int8_min_agreement compares the top-1 of a classifier's int8 and fp32 models "
                          "after its proxy training: drop it with search.detector or objective.accuracy=supernet")
    if cfg.objective.accuracy == "holdout" and not cfg.proxy.data.holdout:
        raise SearchError("objective.accuracy=holdout needs proxy.data.holdout > 0 (e.g. 0.2): the "
                          "reward is measured on training images kept out of training, never on val")


@dataclass
class Accuracy:
    """A sample's accuracy as one source measured it: ``value`` (a fraction) and what else it
    recorded (``metrics``), whether a pruner stopped it and what the pruner saw (``history``)."""

    value: float
    metrics: dict[str, Any] = field(default_factory=dict)
    pruned: bool = False
    history: list[float] = field(default_factory=list)


# How a trial gets its accuracy: (cfg, sample, network, seed, reporter) -> Accuracy. Two sources:
# ``proxy_training`` (train the sample, score it on held-out images) and, with
# objective.accuracy=supernet, ``supernet_proxy.SupernetAccuracy`` (score it as a supernet child).
AccuracySource = Callable[[SearchConfig, Sample, Any, int, Reporter | None], Accuracy]


def evaluate_sample(cfg: SearchConfig, sample: Sample, network: Any, seed: int, latency: LatencyModel,
                    report: Reporter | None = None, accuracy: AccuracySource | None = None) -> TrialOutcome:
    """Score ``network`` (``search_network(cfg, sample.spec)``: the sample, or with ``search.detector``
    the detector on it): its ``accuracy`` from ``accuracy`` (default: ``proxy_training``), latency,
    MACs, parameters and the reward. ``check_proxy(cfg)`` first (as ``run_search`` does, once per
    search)."""
    start = time.monotonic()
    o = cfg.objective
    metrics: dict[str, Any] = dict(spec_cost(network))
    metrics["latency_ms" if latency.unit == "ms" else "latency_mmacs"] = lat = latency(network)
    scored = (accuracy or proxy_training)(cfg, sample, network, seed, report)
    metrics["accuracy"] = scored.value
    metrics.update(scored.metrics)
    # the int8 constraint: a sample whose int8 model disagrees with its fp32 one would not ship
    ships = o.int8_min_agreement is None or metrics.get("int8_agreement", 1.0) >= o.int8_min_agreement
    value = scored.value if ships else 0.0
    if o.kind == "reward":
        alpha, beta = reward_exponents(o)
        metrics["reward"] = mnasnet_reward(value, lat, o.target, alpha, beta)
        values = [metrics["reward"]]
    else:
        metrics["reward"] = None
        values = [value, lat]
    return TrialOutcome(values, metrics, time.monotonic() - start, pruned=scored.pruned, history=scored.history)


def proxy_training(cfg: SearchConfig, sample: Sample, network: Any, seed: int,
                   report: Reporter | None = None) -> Accuracy:
    """Train ``network`` on the proxy task with the sample's hyper-parameters and the trial's
    ``seed``, and score it: ``objective.metric`` on the held-out training images
    (``objective.accuracy``), per-epoch values to ``report`` (the pruner)."""
    from effml.train import fit

    metric = score_metric(cfg)
    history: list[float] = []
    key = "holdout" if cfg.objective.accuracy == "holdout" else "val"

    def on_epoch(epoch: int, row: dict[str, Any]) -> bool:
        acc = _accuracy(row, key, metric)
        history.append(acc)
        return bool(report and report(epoch, acc))

    proxy = proxy_config(cfg, sample, seed)
    int8 = cfg.objective.int8_min_agreement is not None
    if int8 and not isinstance(network, nn.Module):
        from effml.zoo import create_model

        network = create_model(network)  # trained in place: its weights are quantized afterwards
    result = fit(proxy, model=network, on_epoch=on_epoch, write_run=False, quiet=True)
    final = {"holdout": result.ema_holdout or result.holdout, "val": result.ema_val or result.val}[key]
    accuracy = score(final, metric)
    if not math.isfinite(accuracy):
        raise SearchError(f"the proxy training gave {metric} {accuracy} on {key}")
    metrics: dict[str, Any] = {"val_accuracy": score(result.ema_val or result.val, metric)}
    if metric != "top1":
        metrics["metric"] = metric  # what 'accuracy' is, when not top-1
    if int8 and not result.stopped:
        metrics["int8_agreement"] = int8_agreement(proxy, network, key)
    return Accuracy(accuracy, metrics, pruned=result.stopped, history=history)


INT8_CALIBRATION_IMAGES = 32  # training images that calibrate a sample's int8 model
INT8_CHECK_IMAGES = 512  # at most this many held-out (or val) images compare it with fp32


def int8_agreement(proxy: Any, network: Any, key: str) -> float:
    """Top-1 agreement of the trained ``network``'s int8 model with its fp32 model on the proxy's
    ``key`` images ("holdout" or "val"), calibrated on training images. These are its raw weights:
    with EMA, `effml export --int8` of a run would quantize the EMA weights instead."""
    import torch

    from effml.measure.int8 import int8_top1_agreement
    from effml.train.data import build_datasets, take_images
    from effml.train.resolve import resolve_model

    bundle = build_datasets(proxy, resolve_model(network).preprocess)
    checked = bundle.holdout if key == "holdout" else bundle.val
    if checked is None:
        raise SearchError("objective.int8_min_agreement needs the held-out images (proxy.data.holdout)")
    calibration = torch.stack(take_images(bundle.train, INT8_CALIBRATION_IMAGES))
    return int8_top1_agreement(network, calibration, torch.stack(take_images(checked, INT8_CHECK_IMAGES)),
                               threads=proxy.train.threads or 1)


def _accuracy(row: dict[str, Any], key: str, metric: str = "top1") -> float:
    """``metric`` of an epoch's metrics row as a fraction (``score``): the EMA weights' when evaluated."""
    return score(row.get(f"ema_{key}") or row.get(key), metric)
