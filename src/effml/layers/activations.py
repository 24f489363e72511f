"""Activations by name; PyTorch's native modules, which export to ONNX and script cleanly."""

from __future__ import annotations

from torch import nn

from effml.errors import SpecError

_ACTS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "swish": nn.SiLU,  # swish with beta = 1 (EfficientNet) is SiLU
    "hard_swish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
}


def create_act(name: str, inplace: bool = True) -> nn.Module:
    """An activation module by its spec name."""
    try:
        cls = _ACTS[name]
    except KeyError:
        raise SpecError(f"activation {name!r} is unknown; use one of {sorted(_ACTS)}") from None
    return cls() if cls is nn.Sigmoid else cls(inplace=inplace)
