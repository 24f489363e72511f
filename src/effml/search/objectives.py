"""What a trial is scored on: proxy accuracy through the Trainer, cost from the spec, latency
measured or predicted, and the MnasNet reward that combines them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from effml.errors import SearchError
from effml.search.config import ObjectiveConfig, SearchConfig
from effml.search.space import Sample
from effml.spec import NetworkSpec
from effml.spec.plan import plan

# MnasNet (Tan et al., arXiv 1807.11626, section 3, eq. 2): reward = ACC * (LAT / T)^w with
# w = alpha at LAT <= T, beta above. Soft: alpha = beta = -0.07 (twice the latency must buy ~5%
# relative accuracy: 1.05 * 2^beta = 1); hard: alpha = 0, beta = -1.
CONSTRAINTS: dict[str, tuple[float, float]] = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}


def mnasnet_reward(accuracy: float, latency: float, target: float, alpha: float = -0.07,
                   beta: float = -0.07) -> float:
    """ACC * (LAT / T)^w, w = ``alpha`` when LAT <= T else ``beta`` (MnasNet eq. 2)."""
    if target <= 0 or latency <= 0:
        raise SearchError(f"the MnasNet reward needs a positive latency and target (got LAT={latency}, T={target})")
    w = alpha if latency <= target else beta
    return accuracy * (latency / target) ** w


def reward_exponents(cfg: ObjectiveConfig) -> tuple[float, float]:
    """(alpha, beta) of the config: its constraint's, unless given."""
    alpha, beta = CONSTRAINTS[cfg.constraint]
    return (alpha if cfg.alpha is None else cfg.alpha, beta if cfg.beta is None else cfg.beta)


def spec_cost(spec: NetworkSpec) -> dict[str, int]:
    """MACs (the layer plan's count, equal to ``torch.utils.flop_counter`` halved) and parameters,
    from the spec alone: the network is built on the meta device, so no weights are allocated."""
    from effml.models.network import EfficientNet

    with torch.device("meta"):
        net = EfficientNet(spec)
    return {"macs": plan(spec).macs(), "params": sum(p.numel() for p in net.parameters())}


class LatencyModel:
    """A network's latency in ms as the objective says: measured on this machine, predicted from a
    latency table, or (``latency: flops``) its MACs in millions."""

    def __init__(self, cfg: ObjectiveConfig) -> None:
        self.cfg = cfg
        self.table = None
        if cfg.latency == "table":
            from effml.search.latency_table import load_latency_table

            if not cfg.table:
                raise SearchError("objective.latency=table needs objective.table: the JSON file "
                                  "`effml search latency-table` wrote")
            self.table = load_latency_table(cfg.table, runtime=cfg.runtime, threads=cfg.threads,
                                            batch_size=cfg.batch_size)

    @property
    def unit(self) -> str:
        """'ms', or 'MMACs' for latency: flops."""
        return "MMACs" if self.cfg.latency == "flops" else "ms"

    def __call__(self, spec: NetworkSpec) -> float:
        """The spec's cost in ``unit``."""
        if self.cfg.latency == "flops":
            return plan(spec).macs() / 1e6
        if self.table is not None:
            from effml.search.latency_table import predict

            return predict(self.table, spec)
        from effml.models.network import EfficientNet
        from effml.search.latency import measure_latency

        net = EfficientNet(spec).eval()
        return measure_latency(net, spec.resolution, runtime=self.cfg.runtime, batch_size=self.cfg.batch_size,
                               threads=self.cfg.threads, in_channels=spec.in_channels).median_ms


@dataclass
class TrialOutcome:
    """What one trial measured: the objective values and every metric recorded with the trial."""

    values: list[float]
    metrics: dict[str, Any]
    duration_s: float
    pruned: bool = False
    history: list[float] = field(default_factory=list)  # per-epoch accuracy (what the pruner saw)


# Reports a per-epoch accuracy (epoch, value) to the strategy; True: the trial should stop.
Reporter = Callable[[int, float], bool]


def proxy_config(cfg: SearchConfig, sample: Sample, seed: int) -> Any:
    """The proxy training of one trial: the search's ``proxy`` section, the sample's overrides,
    the input size of its spec, the trial's seed and the worker's threads."""
    from effml.train.config import config_from_dict, load_config

    proxy = load_config(None, list(sample.overrides), base=cfg.proxy)
    return config_from_dict({"data": {"image_size": sample.spec.resolution},
                             "train": {"seed": seed, "threads": cfg.search.threads}}, proxy)


def check_proxy(cfg: SearchConfig) -> None:
    """The proxy can score what the objective asks for."""
    if cfg.objective.accuracy == "holdout" and not cfg.proxy.data.holdout:
        raise SearchError("objective.accuracy=holdout needs proxy.data.holdout > 0 (e.g. 0.2): the "
                          "reward is measured on training images kept out of training, never on val")


def evaluate_sample(cfg: SearchConfig, sample: Sample, seed: int, latency: LatencyModel,
                    report: Reporter | None = None) -> TrialOutcome:
    """Train ``sample`` on the proxy task and score it: accuracy on the held-out training images
    (``objective.accuracy``), latency, MACs, parameters and the reward."""
    from effml.train import fit

    start = time.monotonic()
    o = cfg.objective
    metrics: dict[str, Any] = dict(spec_cost(sample.spec))
    metrics["latency_ms" if latency.unit == "ms" else "latency_mmacs"] = lat = latency(sample.spec)
    history: list[float] = []
    key = "holdout" if o.accuracy == "holdout" else "val"

    def on_epoch(epoch: int, row: dict[str, Any]) -> bool:
        acc = _accuracy(row, key)
        history.append(acc)
        return bool(report and report(epoch, acc))

    proxy = proxy_config(cfg, sample, seed)
    check_proxy(cfg)
    result = fit(proxy, model=sample.spec, on_epoch=on_epoch, write_run=False, quiet=True)
    final = {"holdout": result.ema_holdout or result.holdout, "val": result.ema_val or result.val}[key]
    accuracy = final["top1"] / 100
    if not math.isfinite(accuracy):
        raise SearchError(f"the proxy training gave accuracy {accuracy}")
    metrics["accuracy"] = accuracy
    metrics["val_accuracy"] = (result.ema_val or result.val)["top1"] / 100
    if o.kind == "reward":
        alpha, beta = reward_exponents(o)
        metrics["reward"] = mnasnet_reward(accuracy, lat, o.target, alpha, beta)
        values = [metrics["reward"]]
    else:
        metrics["reward"] = None
        values = [accuracy, lat]
    return TrialOutcome(values, metrics, time.monotonic() - start, pruned=result.stopped, history=history)


def _accuracy(row: dict[str, Any], key: str) -> float:
    """Top-1 (fraction) of an epoch's metrics row: the EMA weights' when evaluated."""
    metrics = row.get(f"ema_{key}") or row.get(key) or {}
    return float(metrics.get("top1", float("nan"))) / 100
