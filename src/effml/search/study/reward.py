"""The MnasNet reward: accuracy traded against latency around a target (arXiv 1807.11626, eq. 2)."""

from __future__ import annotations

from effml.errors import SearchError
from effml.search.study.config import ObjectiveConfig

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
