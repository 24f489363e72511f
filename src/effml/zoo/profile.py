"""Size and cost of zoo models, profiled on the meta device (no memory)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from effml.models.counting import count_macs, count_params
from effml.zoo.factory import create_model
from effml.zoo.registry import get_entry


@dataclass(frozen=True)
class ModelProfile:
    """Size and cost of a zoo model at its default resolution."""

    name: str
    family: str
    params: int
    macs: int | None  # None when not counted
    resolution: int
    eval_size: int  # the size its weights are evaluated at (preprocess.input_size)

    def as_dict(self) -> dict[str, object]:
        """The profile as a JSON-ready dict."""
        return asdict(self)


def profile_model(name: str, *, macs: bool = True, resolution: int | None = None) -> ModelProfile:
    """Params and (optionally) MACs of a registered model, built on the meta device."""
    entry = get_entry(name)
    with torch.device("meta"):
        model = create_model(name, resolution=resolution)
    res = resolution or entry.spec().resolution
    return ModelProfile(
        name=name, family=entry.family, params=count_params(model),
        macs=count_macs(model, res) if macs else None, resolution=res,
        eval_size=entry.preprocess.input_size,
    )
