"""What a network costs: MACs and parameters from its spec, and its latency as the objective says
(measured on this machine, predicted from a latency table, or MACs)."""

from __future__ import annotations

from typing import Any

import torch

from effml.errors import SearchError
from effml.search.spaces.search_space import SearchSpace
from effml.search.study.config import ObjectiveConfig, SearchConfig
from effml.search.study.detection_proxy import search_network
from effml.spec import NetworkSpec
from effml.spec.plan import plan


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
            from effml.measure.latency_table import load_latency_table

            if not cfg.table:
                raise SearchError("objective.latency=table needs objective.table: the JSON file "
                                  "`effml search latency-table` wrote")
            self.table = load_latency_table(cfg.table, runtime=cfg.runtime, threads=cfg.threads,
                                            batch_size=cfg.batch_size)

    def check_space(self, space: Any) -> None:
        """Refuse a latency table that lacks layers of ``space`` (built for another space or
        resolution), before any trial or training."""
        if self.table is None or not isinstance(space, SearchSpace):
            return
        missing = self.table.missing(space.layer_variants())
        if missing:
            raise SearchError(f"latency table {self.cfg.table} lacks {len(missing)} layers of space {space.name!r} "
                              f"(e.g. {missing[0]}): it was built for another space or resolution; build one for "
                              f"this space with effml search latency-table")

    @property
    def unit(self) -> str:
        """'ms', or 'MMACs' for latency: flops."""
        return "MMACs" if self.cfg.latency == "flops" else "ms"

    def __call__(self, spec: Any) -> float:
        """The spec's cost in ``unit``: a classifier (``NetworkSpec``) or a whole detector."""
        if self.cfg.latency == "flops":
            return (plan(spec).macs() if isinstance(spec, NetworkSpec) else spec_cost(spec)["macs"]) / 1e6
        if self.table is not None:
            from effml.measure.latency_table import predict

            if not isinstance(spec, NetworkSpec):
                raise SearchError(f"objective.latency=table predicts classifiers from their layers, not a "
                                  f"{type(spec).__name__}; use objective.latency=measured or flops")
            return predict(self.table, spec)
        from effml.measure.latency import measure_latency
        from effml.zoo import create_model

        net = create_model(spec).eval()
        return measure_latency(net, spec.resolution, runtime=self.cfg.runtime, batch_size=self.cfg.batch_size,
                               threads=self.cfg.threads, in_channels=spec.in_channels).median_ms


def reference_latency(cfg: SearchConfig, space: SearchSpace) -> float:
    """The latency (in ``LatencyModel.unit``) of ``space``'s base network as a trial of ``cfg``
    measures it (with ``search.detector``, the detector on it): a natural target T."""
    return LatencyModel(cfg.objective)(search_network(cfg, space.base))
