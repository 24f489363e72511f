"""An honest baseline for every study: what random search of the same size finds, and what ranking
by MACs alone picks.

A strategy's best trial means little alone: random search is a strong baseline in NAS (Li and
Talwalkar, arXiv 1902.07638; Yang et al., arXiv 1912.12522), and a best-of-N is a noisy
maximum. So the report sets the strategy's best against the distribution of the best of N random
samples (N: the study's trials), estimated by resampling N scores with replacement from a random
study many times (seeded), as a median and 10-90% range; the strategy beat random search only
when its best is above that range. The random samples come from the study itself when its strategy
is random, else from a second study, ``<study>-random``, that the runner fills with the same
evaluator (``search.baseline``; on by default only when samples are cheap: ``objective.accuracy=
supernet``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from effml.search.study.config import SearchConfig

FrozenTrial = optuna.trial.FrozenTrial

SUFFIX = "-random"
RESAMPLES = 10_000  # best-of-N draws: the 10% and 90% points then move by well under one rank
QUANTILES = (0.1, 0.5, 0.9)
_DRAWS_PER_CHUNK = 4_000_000  # sampled indices held at once (32 MB)


def baseline_name(study: str) -> str:
    """The name of ``study``'s random baseline in the same storage."""
    return f"{study}{SUFFIX}"


def wants_baseline(cfg: SearchConfig) -> bool:
    """Whether a search of ``cfg`` also scores a random baseline study: ``search.baseline``, where
    auto means only with ``objective.accuracy=supernet``; never for a random strategy (the study
    is its own baseline)."""
    if cfg.search.strategy == "random":
        return False
    if cfg.search.baseline == "auto":
        return cfg.objective.accuracy == "supernet"
    return cfg.search.baseline == "on"


def baseline_config(cfg: SearchConfig) -> SearchConfig:
    """The search that fills the random baseline: the same space, evaluator and trial count, the
    random strategy seeded ``search.seed + 1``, in study ``<study>-random``."""
    search = dataclasses.replace(cfg.search, study=baseline_name(cfg.search.study), strategy="random",
                                 strategy_options={}, seed=cfg.search.seed + 1, baseline="off")
    return dataclasses.replace(cfg, search=search)


@dataclass(frozen=True)
class BestOfN:
    """The distribution of the best of ``n`` scores drawn with replacement from a random study, from
    ``resamples`` seeded draws: its 10%, 50% and 90% points (None: most draws found no score, e.g.
    no member within the target)."""

    n: int
    low: float | None
    median: float | None
    high: float | None
    resamples: int
    seed: int


def best_of_n(scores: Sequence[float], n: int, *, resamples: int = RESAMPLES, seed: int = 0) -> BestOfN:
    """Resample ``n`` of ``scores`` with replacement ``resamples`` times and take each draw's best;
    -inf scores (members outside the target) never win a draw that holds another. Quantiles are
    points of the draws (no interpolation)."""
    values = np.asarray(scores, dtype=np.float64)
    if n < 1 or values.size == 0:
        return BestOfN(n, None, None, None, 0, seed)
    rng = np.random.default_rng(seed)
    bests = np.empty(resamples)
    chunk = max(1, _DRAWS_PER_CHUNK // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        bests[start:stop] = values[rng.integers(0, values.size, size=(stop - start, n))].max(axis=1)
    points = [float(q) for q in np.quantile(bests, QUANTILES, method="inverted_cdf")]
    low, median, high = (q if math.isfinite(q) else None for q in points)
    return BestOfN(n, low, median, high, resamples, seed)


def trial_score(trial: FrozenTrial, kind: str, target: float | None) -> float:
    """What a trial is ranked by: its value (a reward, one objective), or for an accuracy-latency
    study its accuracy when within ``target`` (-inf outside it)."""
    if kind != "multi":
        return float(trial.values[0])
    if target is not None and trial.values[1] > target:
        return -math.inf
    return float(trial.values[0])


def cost(trial: FrozenTrial) -> float | None:
    """The trial's latency in ms, or its MACs in millions when the study costs by MACs."""
    metrics = trial.user_attrs.get("metrics") or {}
    value = metrics.get("latency_ms", metrics.get("latency_mmacs"))
    return None if value is None else float(value)


def macs_pick(trials: Sequence[FrozenTrial], target: float | None) -> FrozenTrial | None:
    """What ranking by MACs alone picks: the trial with the most MACs within ``target`` (latency in
    ms, or millions of MACs; every trial when there is none); earliest on ties."""
    within = [t for t in trials if (t.user_attrs.get("metrics") or {}).get("macs") is not None
              and (target is None or (cost(t) is not None and cost(t) <= target))]
    if not within:
        return None
    return max(within, key=lambda t: (t.user_attrs["metrics"]["macs"], -t.number))


def complete(study: optuna.Study) -> list[FrozenTrial]:
    """The study's complete trials with finite values (the ones a best or a baseline counts)."""
    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.values is not None and all(math.isfinite(v) for v in t.values)]


def find_baseline(study: optuna.Study) -> optuna.Study | None:
    """The random baseline study beside ``study`` in its storage (``<study>-random``), if any."""
    name = baseline_name(study.study_name)
    try:
        return optuna.load_study(study_name=name, storage=study._storage)  # the same storage as ``study``
    except KeyError:
        return None


def compare_with_random(study: optuna.Study, *, kind: str, target: float | None, strategy: str | None,
                        unit: str, baseline: optuna.Study | None = None, resamples: int = RESAMPLES,
                        seed: int = 0) -> dict[str, Any]:
    """The baseline block of a report: the strategy's best, the random samples' best and spread,
    their best-of-N distribution (N: the study's complete trials), what ranking by MACs picks, and
    one sentence saying whether the strategy beat random search beyond its spread. ``baseline``:
    the random study (default: ``find_baseline``; the study itself when ``strategy`` is random)."""
    name = strategy or "this study's strategy"
    own = complete(study)
    is_random = strategy == "random"
    if baseline is None and not is_random:
        baseline = find_baseline(study)
    source = study if is_random else baseline
    n = len(own)
    what = "reward" if kind != "multi" else ("accuracy within the target" if target is not None else "accuracy")
    best = max((trial_score(t, kind, target) for t in own), default=-math.inf)
    out: dict[str, Any] = {
        "score": what, "n": n, "strategy": strategy, "strategy_best": _finite(best),
        "source": None if source is None else source.study_name,
    }
    if source is None:
        pick = macs_pick(own, target)
        out.update(available=False, macs_pick=_pick_record(pick, "study", target, unit),
                   sentence=(f"No random baseline: no study {baseline_name(study.study_name)!r} was scored beside "
                             f"this one, so whether {name} beat random search is unknown; rerun with "
                             f"search.baseline=on to score {n} random samples with the same evaluator (with proxy "
                             f"training that doubles the trainings). The MACs ranking uses this study's trials."))
        return out
    members = complete(source)
    if not members:
        out.update(available=False, macs_pick=_pick_record(macs_pick(own, target), "study", target, unit),
                   sentence=f"The random baseline {source.study_name!r} has no complete trial yet; continue the "
                            f"search with --resume to score it.")
        return out
    scores = [trial_score(t, kind, target) for t in members]
    finite = sorted(s for s in scores if math.isfinite(s))
    dist = best_of_n(scores, n, resamples=resamples, seed=seed)
    pick = macs_pick(members, target)
    out.update(
        available=True, members=len(members), within_target=len(finite),
        random_best=finite[-1] if finite else None,
        random_scores={"min": finite[0], "median": float(np.median(finite)), "max": finite[-1]} if finite else None,
        best_of_n=dataclasses.asdict(dist),
        macs_pick=_pick_record(pick, "random baseline" if not is_random else "study", target, unit),
    )
    fmt = _formatter(kind)
    spread = (f"random's median {fmt(dist.median)}, 10-90% {fmt(dist.low)}-{fmt(dist.high)}"
              if dist.high is not None else "random's best-of-N found nothing within the target in most draws")
    if is_random:
        out["beat"] = None
        out["sentence"] = (f"random search is this study's own baseline: best {fmt(_finite(best))}; the best of "
                           f"{n} of its samples drawn again has median {fmt(dist.median)}, "
                           f"10-90% {fmt(dist.low)}-{fmt(dist.high)}.")
    elif not math.isfinite(best):
        out["beat"] = False
        out["sentence"] = f"{name} found no network within the target ({spread})."
    elif dist.high is None or best > dist.high:
        out["beat"] = True
        margin = "" if dist.high is None else f" is {fmt(best - dist.high, delta=True)} above random's 90th percentile"
        out["margin"] = None if dist.high is None else best - dist.high
        out["sentence"] = f"{name} beat random search beyond its spread: best {fmt(best)}{margin} ({spread})."
    else:
        out["beat"] = False
        out["sentence"] = f"{name} did not beat random search beyond its spread (best {fmt(best)} vs {spread})."
    return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _formatter(kind: str) -> Any:
    """Rewards as 4 decimals; accuracies as percentages (a difference in points)."""
    def fmt(x: float | None, delta: bool = False) -> str:
        if x is None:
            return "—"
        if kind == "multi":
            return f"{100 * x:.2f} points" if delta else f"{100 * x:.2f}%"
        return f"{x:.4f}"
    return fmt


def _pick_record(trial: FrozenTrial | None, source: str, target: float | None, unit: str) -> dict[str, Any] | None:
    if trial is None:
        return None
    m = trial.user_attrs.get("metrics") or {}
    return {"from": source, "trial": trial.number, "macs": m.get("macs"), "accuracy": m.get("accuracy"),
            "reward": m.get("reward"), "cost": cost(trial), "unit": unit, "target": target}
