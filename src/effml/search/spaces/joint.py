"""AutoHAS's joint space (arXiv 2006.03656, section 3): architecture decisions and training
hyper-parameters as one set of categorical decisions.

The architecture part is an elastic ``SearchSpace`` (every member a slice of one supernet). A
categorical hyper-parameter (the optimizer) keeps its options. A continuous one is discretised
into K *basis* values: during the search the controller samples one basis per step, and the final
value is the mixture of the bases weighted by the learned probabilities, ``sum_k p_k b_k``. For
log-spaced bases (learning rate, weight decay) the mixture is taken over the logarithms (a
weighted geometric mean), so that a distribution split between 1e-3 and 1e-1 gives 1e-2, not
5e-2; this is our reading [D], the paper states the linear form for its bases.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from effml.errors import SearchError
from effml.search.spaces.search_space import HyperChoice, SearchSpace, _suggestible
from effml.spec import NetworkSpec

# The hyper-parameters AutoHAS can change from one step to the next with shared weights: the
# update rule's (optimizer, learning rate, weight decay), the loss's (label smoothing), the data's
# (mixup alpha) and the network's (dropout before the classifier).
STEP_HYPER = ("optim.name", "optim.lr", "optim.weight_decay", "train.label_smoothing", "data.mixup",
              "model.dropout")
OPTIMIZERS = ("sgd", "adamw", "rmsprop_tf")


@dataclass(frozen=True)
class HyperBasis:
    """One hyper-parameter as a categorical decision: its options, or K basis values of its range."""

    key: str
    values: tuple[Any, ...]
    continuous: bool
    log: bool = False

    def mixture(self, probs: Sequence[float]) -> Any:
        """The final value under the probabilities ``probs``: the weighted mixture of the bases
        (geometric for log-spaced ones), or the most probable option of a categorical choice."""
        p = np.asarray(probs, dtype=float)
        if not self.continuous:
            return self.values[int(np.argmax(p))]
        if self.log:
            return float(math.exp(float(np.dot(p, np.log(self.values)))))
        return float(np.dot(p, self.values))


def hyper_basis(h: HyperChoice, k: int) -> HyperBasis:
    """``h`` discretised: categorical options as they are, a float range into ``k`` bases spaced
    evenly (on a log scale when ``h.log``) from ``low`` to ``high``."""
    if h.key not in STEP_HYPER:
        raise SearchError(f"hyper-parameter {h.key}: AutoHAS changes only {list(STEP_HYPER)} from step to "
                          f"step with shared weights; search other settings with `effml search`")
    if h.kind == "categorical":
        if h.key == "optim.name" and not set(h.options) <= set(OPTIMIZERS):
            raise SearchError(f"hyper-parameter optim.name: options {list(h.options)}; use {list(OPTIMIZERS)}")
        return HyperBasis(h.key, tuple(h.options), continuous=False)
    if h.kind == "int":
        raise SearchError(f"hyper-parameter {h.key}: integer ranges are not supported by AutoHAS; give "
                          f"categorical options or a float range")
    if k < 2:
        raise SearchError(f"autohas.bases={k}: a continuous hyper-parameter needs at least 2 basis values")
    if h.log:
        values = np.exp(np.linspace(math.log(h.low), math.log(h.high), k))
    else:
        values = np.linspace(h.low, h.high, k)
    return HyperBasis(h.key, tuple(float(f"{v:.6g}") for v in values), continuous=True, log=h.log)


@dataclass(frozen=True)
class JointSpace:
    """An elastic architecture space and the hyper-parameters' bases: decisions by name."""

    arch: SearchSpace
    hyper: tuple[HyperBasis, ...]

    @classmethod
    def from_space(cls, space: SearchSpace, bases: int) -> JointSpace:
        """Split ``space``: its block and network choices are the architecture, its ``hyper``
        entries become bases."""
        if not space.hyper:
            raise SearchError(f"space {space.name!r} has no hyper-parameters (its 'hyper' list is empty): "
                              f"AutoHAS searches both; for architectures alone use `effml supernet`")
        arch = dataclasses.replace(space, hyper=())
        return cls(arch, tuple(hyper_basis(h, bases) for h in space.hyper))

    def decisions(self) -> dict[str, int]:
        """Every decision's name and number of options, architecture first."""
        out = {c.name: len(c.options) for c in self.arch.choices}
        out.update({h.key: len(h.values) for h in self.hyper})
        return out

    def options(self, name: str) -> tuple[Any, ...]:
        """The options (or basis values) of decision ``name``."""
        for c in self.arch.choices:
            if c.name == name:
                return tuple(c.options)
        for h in self.hyper:
            if h.key == name:
                return h.values
        raise SearchError(f"no decision {name!r} in the joint space")

    def decode(self, picked: Mapping[str, int]) -> tuple[NetworkSpec, dict[str, Any]]:
        """The architecture and the hyper-parameter values of the option indices ``picked``."""
        params = {c.name: _suggestible(c.options[picked[c.name]]) for c in self.arch.choices}
        spec = self.arch.member(params).spec
        return spec, {h.key: h.values[picked[h.key]] for h in self.hyper}

    def final(self, probs: Mapping[str, Sequence[float]]) -> tuple[NetworkSpec, dict[str, Any], dict[str, Any]]:
        """The chosen member under the learned ``probs``: the most probable option of each
        architecture decision, each hyper-parameter's mixture; and the architecture decisions
        as ``SearchSpace.member`` takes them."""
        params = {c.name: _suggestible(c.options[int(np.argmax(probs[c.name]))]) for c in self.arch.choices}
        hyper = {h.key: h.mixture(probs[h.key]) for h in self.hyper}
        return self.arch.member(params).spec, hyper, params
