"""A factorized categorical policy trained with REINFORCE: one softmax per decision.

MnasNet's controller (arXiv 1807.11626, section 4) and AutoHAS's (arXiv 2006.03656) both sample
each decision of a factorized space from its own distribution and learn from a scalar reward. We
use one vector of logits per decision and the REINFORCE rule (Williams 1992) with an exponential
moving-average reward baseline and an entropy bonus:
``logits += lr * ((reward - baseline) * grad log pi + entropy_weight * grad H)``.
``ReinforceSampler`` (an Optuna sampler) and the AutoHAS controller share it; TuNAS's controller
(arXiv 2008.06120; google-research ``tunas/mobile_architecture_search.py``) is the same policy whose
steps go through Adam with beta1 = 0, beta2 = 0.999 (``Adam``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Adam:
    """Adam (Kingma & Ba, arXiv 1412.6980) on the ascent direction of each decision's logits: its
    moments per decision and the number of updates (for the bias correction). TuNAS's settings are
    the defaults."""

    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)

    def direction(self, name: str, grad: np.ndarray) -> np.ndarray:
        """The step direction for ``grad`` of decision ``name`` (call ``tick`` once per update first)."""
        m = self.beta1 * self.m.get(name, np.zeros_like(grad)) + (1 - self.beta1) * grad
        v = self.beta2 * self.v.get(name, np.zeros_like(grad)) + (1 - self.beta2) * grad * grad
        self.m[name], self.v[name] = m, v
        m_hat, v_hat = m / (1 - self.beta1 ** self.t), v / (1 - self.beta2 ** self.t)
        return m_hat / (np.sqrt(v_hat) + self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "t": self.t,
                "m": {k: v.tolist() for k, v in self.m.items()}, "v": {k: v.tolist() for k, v in self.v.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Adam:
        return cls(state["beta1"], state["beta2"], state["eps"], state["t"],
                   {k: np.asarray(v, dtype=float) for k, v in state["m"].items()},
                   {k: np.asarray(v, dtype=float) for k, v in state["v"].items()})


@dataclass
class FactorizedPolicy:
    """Logits per decision (a decision not yet updated is uniform) and the reward baseline; with
    ``adam`` the steps go through Adam, otherwise plain gradient ascent."""

    logits: dict[str, np.ndarray] = field(default_factory=dict)
    baseline: float | None = None
    adam: Adam | None = None

    def probs(self, name: str, n: int | None = None) -> np.ndarray:
        """The decision's probabilities (uniform over ``n`` options while it has no logits)."""
        if name not in self.logits:
            if n is None:
                raise KeyError(name)
            return np.full(n, 1.0 / n)
        z = self.logits[name] - self.logits[name].max()
        return np.exp(z) / np.exp(z).sum()

    def entropy(self, name: str, n: int | None = None) -> float:
        """The decision's entropy in nats (log n when uniform)."""
        p = self.probs(name, n)
        return float(-(p * np.log(p)).sum())

    def update(self, picked: Mapping[str, tuple[int, int]], reward: float, *, lr: float, decay: float,
               entropy_weight: float) -> float:
        """One REINFORCE step for the decisions ``picked`` (name -> (chosen index, number of options))
        rewarded ``reward``; the advantage used. The first reward seeds the baseline, so the first
        sample neither wins nor loses."""
        baseline = reward if self.baseline is None else self.baseline
        advantage = float(reward - baseline)
        if self.adam is not None:
            self.adam.t += 1
        for name, (index, n) in picked.items():
            p = self.probs(name, n)
            grad_log_pi = -p
            grad_log_pi[index] += 1.0
            log_p = np.log(p)
            grad_entropy = -p * (log_p + (-(p * log_p).sum()))  # d/dz of H = -sum p log p
            grad = advantage * grad_log_pi + entropy_weight * grad_entropy
            step = lr * (grad if self.adam is None else self.adam.direction(name, grad))
            self.logits[name] = self.logits.get(name, np.zeros(n)) + step
        self.baseline = float(decay * baseline + (1.0 - decay) * reward)
        return advantage

    def state_dict(self) -> dict[str, Any]:
        """Plain data (lists and floats) that a ``weights_only`` checkpoint stores."""
        return {"logits": {k: v.tolist() for k, v in self.logits.items()}, "baseline": self.baseline,
                "adam": None if self.adam is None else self.adam.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` gave."""
        self.logits = {k: np.asarray(v, dtype=float) for k, v in state["logits"].items()}
        self.baseline = state["baseline"]
        self.adam = Adam.from_state(state["adam"]) if state.get("adam") else None
