"""The auxiliary BatchNorm of AdvProp: one BN for clean inputs, a second one for adversarial inputs.

AdvProp (Xie et al., CVPR 2020; arXiv 1911.09665, section 4.2) shares every conv and
dense weight between clean and adversarial examples but gives each BN layer an auxiliary twin
with its own running statistics *and* its own affine gamma/beta, because the two kinds of input
come from different distributions. Only the main BNs are used at evaluation time.

The main BN keeps the keys of a plain ``BatchNormAct2d`` (``bn1.weight``, ``bn1.running_mean``,
...); the twin lives under ``aux_bn`` (``bn1.aux_bn.weight``), as timm's ``SplitBatchNorm2d``
does, so ``strip_aux_bn(state_dict)`` loads into a plain model with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TypeVar, overload

import torch
from torch import nn

from effml.errors import EffmlError
from effml.layers.norm import BatchNormAct2d

_AUX = "aux_bn"
ModuleT = TypeVar("ModuleT", bound=nn.Module)


class DualBatchNormAct2d(BatchNormAct2d):
    """A ``BatchNormAct2d`` (main, original keys) plus an auxiliary BN; ``route_aux`` picks one."""

    def __init__(
        self, num_features: int, act: str | None = None, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__(num_features, act, eps, momentum)
        self.aux_bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
        self.route_aux = False

    @classmethod
    def from_bn(cls, bn: BatchNormAct2d) -> DualBatchNormAct2d:
        """A dual BN that shares ``bn``'s parameters, buffers and activation; aux starts as a copy."""
        w = bn.weight
        dual = cls(bn.num_features, None, bn.eps, bn.momentum)  # type: ignore[arg-type]
        dual.act = bn.act
        # the same Parameter objects, so an optimizer built before the conversion still sees them
        dual.weight, dual.bias = bn.weight, bn.bias
        dual.running_mean, dual.running_var = bn.running_mean, bn.running_var
        dual.num_batches_tracked = bn.num_batches_tracked
        aux = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                getattr(aux, name).copy_(getattr(bn, name))
        aux.weight.requires_grad_(bn.weight.requires_grad)
        aux.bias.requires_grad_(bn.bias.requires_grad)
        dual.aux_bn = aux
        dual.train(bn.training)
        return dual

    def to_plain(self) -> BatchNormAct2d:
        """The main BN alone, as a ``BatchNormAct2d`` sharing this module's tensors."""
        plain = BatchNormAct2d(self.num_features, None, self.eps, self.momentum)  # type: ignore[arg-type]
        plain.act = self.act
        plain.weight, plain.bias = self.weight, self.bias
        plain.running_mean, plain.running_var = self.running_mean, self.running_var
        plain.num_batches_tracked = self.num_batches_tracked
        plain.train(self.training)
        return plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.route_aux:
            return self.act(self.aux_bn(x))
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, route_aux={self.route_aux}"


def _replace(
    module: nn.Module, kind: type[nn.Module], make: Callable[[nn.Module], nn.Module], memo: dict[int, nn.Module]
) -> int:
    """Replaces every child of type ``kind`` (recursively) with ``make(child)``; returns the count."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is kind:
            if id(child) not in memo:  # a module shared by two parents is converted once
                memo[id(child)] = make(child)
                count += 1
            setattr(module, name, memo[id(child)])
        else:
            count += _replace(child, kind, make, memo)
    return count


def convert_to_advprop(model: ModuleT) -> ModuleT:
    """Gives every ``BatchNormAct2d`` of ``model`` an auxiliary BN (in place); returns the model.

    Convert before building the optimizer: the auxiliary gamma/beta are new parameters.
    """
    if type(model) is BatchNormAct2d:
        return DualBatchNormAct2d.from_bn(model)  # type: ignore[return-value]
    _replace(model, BatchNormAct2d, DualBatchNormAct2d.from_bn, {})  # type: ignore[arg-type]
    duals = {id(m.aux_bn) for m in model.modules() if isinstance(m, DualBatchNormAct2d)}
    if not duals:
        raise EffmlError(
            f"convert_to_advprop: {type(model).__name__} has no effml BatchNormAct2d layer to give an "
            "auxiliary BN; AdvProp needs a model built by effml.create_model"
        )
    shared = [
        name for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not isinstance(m, DualBatchNormAct2d) and id(m) not in duals
    ]
    if shared:
        # such a norm would mix clean and adversarial statistics, which is what AdvProp avoids
        raise EffmlError(
            f"convert_to_advprop: norm layers {shared[:5]} are not BatchNormAct2d and cannot get an "
            "auxiliary BN; build every BN of the model as effml.layers.BatchNormAct2d"
        )
    return model


class _Routing:
    """Restores the previous main/aux routing on ``__exit__``."""

    def __init__(self, previous: list[tuple[DualBatchNormAct2d, bool]]) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for module, route_aux in self._previous:
            module.route_aux = route_aux


def use_aux_bn(model: nn.Module, enabled: bool = True) -> _Routing:
    """Routes the next forwards through the auxiliary (or main) BNs; as a ``with``, restores on exit."""
    duals = [m for m in model.modules() if isinstance(m, DualBatchNormAct2d)]
    if enabled and not duals:
        raise EffmlError(
            f"use_aux_bn: {type(model).__name__} has no auxiliary BNs; call "
            "effml.layers.convert_to_advprop(model) first"
        )
    previous = [(m, m.route_aux) for m in duals]
    for m in duals:
        m.route_aux = enabled
    return _Routing(previous)


@overload
def strip_aux_bn(model_or_state_dict: ModuleT) -> ModuleT: ...
@overload
def strip_aux_bn(model_or_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
def strip_aux_bn(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
) -> nn.Module | dict[str, torch.Tensor]:
    """Drops the auxiliary BNs: a model becomes plain in place; a state_dict is copied without them."""
    if isinstance(model_or_state_dict, nn.Module):
        model = model_or_state_dict
        if isinstance(model, DualBatchNormAct2d):
            return model.to_plain()
        _replace(model, DualBatchNormAct2d, DualBatchNormAct2d.to_plain, {})  # type: ignore[arg-type]
        return model
    state = model_or_state_dict
    out = type(state)() if isinstance(state, dict) else {}
    for key, value in state.items():
        if _AUX not in key.split("."):
            out[key] = value
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # module versions, read by BatchNorm's _load_from_state_dict
        out._metadata = type(metadata)(  # type: ignore[attr-defined]
            (k, v) for k, v in metadata.items() if _AUX not in k.split(".")
        )
    return out
