"""What a trial is scored on: proxy accuracy through the Trainer (top-1, or a detector's AP50 on
a detection proxy), cost from the spec, latency measured or predicted, and the MnasNet reward that
combines them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from effml.errors import SearchError
from effml.search.config import ObjectiveConfig, SearchConfig
from effml.search.detector import check_task, score, score_metric, search_network
from effml.search.space import Sample, SearchSpace
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


def spec_cost(spec: Any) -> dict[str, int]:
    """MACs and parameters from the spec alone, built on the meta device (no weights allocated):
    a classifier's MACs are the layer plan's count (equal to ``torch.utils.flop_counter`` halved),
    a detector's (``search.detector``) are counted on its forward pass at its resolution."""
    from effml.models.counting import count_macs
    from effml.zoo import create_model

    with torch.device("meta"):
        net = create_model(spec)
    params = sum(p.numel() for p in net.parameters())
    macs = plan(spec).macs() if isinstance(spec, NetworkSpec) else count_macs(net, spec.resolution, spec.in_channels)
    return {"macs": macs, "params": params}


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

    def __call__(self, spec: Any) -> float:
        """The spec's cost in ``unit``: a classifier (``NetworkSpec``) or a whole detector."""
        if self.cfg.latency == "flops":
            return (plan(spec).macs() if isinstance(spec, NetworkSpec) else spec_cost(spec)["macs"]) / 1e6
        if self.table is not None:
            from effml.search.latency_table import predict

            if not isinstance(spec, NetworkSpec):
                raise SearchError(f"objective.latency=table predicts classifiers from their layers, not a "
                                  f"{type(spec).__name__}; use objective.latency=measured or flops")
            return predict(self.table, spec)
        from effml.search.latency import measure_latency
        from effml.zoo import create_model

        net = create_model(spec).eval()
        return measure_latency(net, spec.resolution, runtime=self.cfg.runtime, batch_size=self.cfg.batch_size,
                               threads=self.cfg.threads, in_channels=spec.in_channels).median_ms


def reference_latency(cfg: SearchConfig, space: SearchSpace) -> float:
    """The latency (in ``LatencyModel.unit``) of ``space``'s base network as a trial of ``cfg``
    measures it (with ``search.detector``, the detector on it): a natural target T."""
    return LatencyModel(cfg.objective)(search_network(cfg, space.base))


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
    """The proxy training of one trial: the search's ``proxy`` section, the sample's overrides,
    the input size of its spec, the trial's seed and the worker's threads."""
    from effml.train.config import config_from_dict, load_config

    proxy = load_config(None, list(sample.overrides), base=cfg.proxy)
    return config_from_dict({"data": {"image_size": sample.spec.resolution},
                             "train": {"seed": seed, "threads": cfg.search.threads}}, proxy)


def check_proxy(cfg: SearchConfig) -> None:
    """The proxy can score what the objective asks for, on the task the searched networks have."""
    check_task(cfg)
    if cfg.objective.accuracy == "holdout" and not cfg.proxy.data.holdout:
        raise SearchError("objective.accuracy=holdout needs proxy.data.holdout > 0 (e.g. 0.2): the "
                          "reward is measured on training images kept out of training, never on val")


def evaluate_sample(cfg: SearchConfig, sample: Sample, seed: int, latency: LatencyModel,
                    report: Reporter | None = None) -> TrialOutcome:
    """Train ``sample`` (or with ``search.detector`` the detector on it) on the proxy task and
    score it: ``objective.metric`` on the held-out training images (``objective.accuracy``) as
    ``accuracy``, latency, MACs, parameters and the reward."""
    from effml.train import fit

    start = time.monotonic()
    o = cfg.objective
    check_proxy(cfg)
    network = search_network(cfg, sample.spec)
    metric = score_metric(cfg)
    metrics: dict[str, Any] = dict(spec_cost(network))
    metrics["latency_ms" if latency.unit == "ms" else "latency_mmacs"] = lat = latency(network)
    history: list[float] = []
    key = "holdout" if o.accuracy == "holdout" else "val"

    def on_epoch(epoch: int, row: dict[str, Any]) -> bool:
        acc = _accuracy(row, key, metric)
        history.append(acc)
        return bool(report and report(epoch, acc))

    proxy = proxy_config(cfg, sample, seed)
    result = fit(proxy, model=network, on_epoch=on_epoch, write_run=False, quiet=True)
    final = {"holdout": result.ema_holdout or result.holdout, "val": result.ema_val or result.val}[key]
    accuracy = score(final, metric)
    if not math.isfinite(accuracy):
        raise SearchError(f"the proxy training gave {metric} {accuracy} on {key}")
    metrics["accuracy"] = accuracy
    metrics["val_accuracy"] = score(result.ema_val or result.val, metric)
    if metric != "top1":
        metrics["metric"] = metric  # what 'accuracy' is, when not top-1
    if o.kind == "reward":
        alpha, beta = reward_exponents(o)
        metrics["reward"] = mnasnet_reward(accuracy, lat, o.target, alpha, beta)
        values = [metrics["reward"]]
    else:
        metrics["reward"] = None
        values = [accuracy, lat]
    return TrialOutcome(values, metrics, time.monotonic() - start, pruned=result.stopped, history=history)


def _accuracy(row: dict[str, Any], key: str, metric: str = "top1") -> float:
    """``metric`` (a fraction) of an epoch's metrics row: the EMA weights' when evaluated."""
    return score(row.get(f"ema_{key}") or row.get(key), metric)
