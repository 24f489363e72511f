"""TuNAS (Bender et al., "Can weight sharing outperform random architecture search?", CVPR 2020,
arXiv 2008.06120): a one-shot search whose controller learns from the shared weights as they train.

Each step (google-research ``tunas/mobile_architecture_search.py``):

1. the controller (one softmax per decision, ``FactorizedPolicy``) samples a child; during the
   warm-ups a decision is replaced with a probability that decays linearly from 1 to 0: a layer's
   op choice by *every* op of the layer, averaged (``op_warmup``), a width or expansion by its
   largest option (``filter_warmup``);
2. that child takes one training step of the shared weights (the Trainer's optimizer and schedule);
3. once the controller learns (after ``delay`` of the steps; TuNAS: 25%), the same child scores
   the accuracy Q on a held-out batch (``reward_batch`` training batches; TuNAS: 4) and its cost
   T(a) comes from a latency table of the space on this machine, or its MACs; the reward is
   ``Q + beta |T(a) / T0 - 1|`` (TuNAS's absolute reward) or ``Q (T(a) / T0)^beta`` (MnasNet's);
4. REINFORCE with a moving-average baseline (momentum 0.95) and Adam (beta1 0, beta2 0.999) updates
   the controller, its learning rate growing exponentially (x10 over the search, as TuNAS's).

The supernet shares a layer's widths and expansions as leading channels and, by default, its
kernel sizes as centres of the largest (``tunas.kernels: shared``); ``separate`` gives each kernel
size its own weights as TuNAS's code does (``Supernet``), without TuNAS's op warm-up over kernels.
Its residual blocks start as the identity (``tunas.zero_init_last_bn``, as BigNAS's supernet).

With ``search.detector: ssdlite`` the search is MobileDets' (arXiv 2004.14525): the supernet is an
SSDLite over the space's backbones (``detection_supernet``), the step's loss and Q are the detection
ones (``signals``: exp(-loss) of the held-out window by default) and the cost is the whole
detector's MACs; the found architecture is a detector spec.

The held-out batch runs BatchNorm on its own batch statistics, leaving the shared running averages
as they are: those mix every child's statistics (TuNAS's code evaluates with the moving averages;
at our scale of a few thousand steps they lag the weights). The result is the controller's most
likely architecture, a plain spec.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from effml.errors import SearchError
from effml.files import atomic_write_text
from effml.search.oneshot.detection_supernet import SSDLiteSupernet
from effml.search.oneshot.signals import ClassificationSignal, DetectionSignal
from effml.search.oneshot.supernet import Supernet, block_kinds, zero_init_last_bn
from effml.search.spaces.search_space import SearchSpace, _magnitude, _suggestible
from effml.search.study.config import SearchConfig, TunasConfig
from effml.search.study.policy import Adam, FactorizedPolicy
from effml.spec import NetworkSpec
from effml.train.distributed import unwrap
from effml.train.objective import Batch, StepOutput
from effml.train.step import ReportingStep, StatefulStep, accumulate_step

if TYPE_CHECKING:
    from effml.search.study.cost import LatencyModel
    from effml.train.trainer import Trainer

# Decisions TuNAS's filter warm-up widens (its FILTERS tag: output and expansion filters).
FILTER_FIELDS = ("out_channels", "filters", "expand_ratio", "stem_channels", "head_channels")
RESULT_JSON = "tunas.json"
SEARCH_YAML = "search.yaml"  # the search config, beside the supernet run's own config.yaml
FOUND_SPEC = "found_model.json"
PLOT = "tunas.png"
# Training batches that re-estimate a child's BatchNorm statistics before it is scored with the
# shared weights (as BigNAS's supernet.calibration_batches default).
CALIBRATION_BATCHES = 16


def tunas_reward(accuracy: float, cost: float, target: float, beta: float, kind: str = "absolute") -> float:
    """TuNAS's absolute reward ``Q + beta |T / T0 - 1|`` (arXiv 2008.06120, section 3.3), or MnasNet's
    soft reward ``Q (T / T0)^beta`` (arXiv 1807.11626, eq. 2 with alpha = beta)."""
    if kind == "absolute":
        return accuracy + beta * abs(cost / target - 1.0)
    return accuracy * (cost / target) ** beta


def linear_decay(step: int, steps: int) -> float:
    """1 at step 0, falling linearly to 0 at ``steps`` (0 throughout when ``steps`` is 0)."""
    return 0.0 if steps <= 0 else max(0.0, 1.0 - step / steps)


@dataclasses.dataclass(frozen=True)
class Draw:
    """One step's child: the controller's sample (decision -> option index), the member it names,
    and what trains under the warm-ups: the member with some widths at their largest, and blocks
    that run every op they offer (per block, the member whose block there is each op)."""

    picked: dict[str, int]
    spec: NetworkSpec
    train_spec: NetworkSpec
    all_ops: dict[tuple[int, int], dict[str, NetworkSpec]]


class TunasStep(ReportingStep, StatefulStep):
    """One TuNAS step over the Trainer's ``Supernet``. Its state (the controller with Adam's moments,
    the reward baseline, the history) goes into the Trainer's checkpoint, so ``--resume`` continues
    exactly; the sample of step n comes from a generator seeded by (seed, n)."""

    def __init__(self, space: SearchSpace, cfg: TunasConfig, cost: Callable[[NetworkSpec], float], target: float,
                 *, seed: int = 0, label_smoothing: float = 0.0, signal: Any = None) -> None:
        """``cost``: a member's cost (its backbone spec: the cost of what it stands for, e.g. its
        detector); ``signal``: the task's loss and reward quality (``signals``; default classification)."""
        for name, value in (("op_warmup", cfg.op_warmup), ("filter_warmup", cfg.filter_warmup)):
            if value > cfg.delay:
                raise SearchError(f"tunas.{name}={value} is longer than tunas.delay={cfg.delay}: a warm-up child "
                                  f"is not the controller's sample, so it must end before the controller learns "
                                  f"(as in TuNAS)")
        self.space, self.cfg, self.cost, self.target = space, cfg, cost, target
        self.seed = seed
        self.signal = signal or ClassificationSignal(label_smoothing)
        self.sizes = {c.name: len(c.options) for c in space.choices}
        self.policy = FactorizedPolicy(adam=Adam())
        self.history: list[dict[str, Any]] = []
        # seconds spent by earlier sessions of a resumed search (up to their last checkpoint), and
        # the start of this one: the record's cost is the whole search's, not the last session's
        self.earlier = {"wall_s": 0.0, "cpu_s": 0.0}
        self.session = (time.monotonic(), time.process_time())

    # -- the controller ------------------------------------------------------------------------
    def probabilities(self) -> dict[str, np.ndarray]:
        """Every decision's current distribution."""
        return {name: self.policy.probs(name, n) for name, n in self.sizes.items()}

    def entropy(self) -> float:
        """The controller's entropy relative to the uniform one's (1: uniform, 0: every decision certain)."""
        total = sum(math.log(n) for n in self.sizes.values() if n > 1)
        return sum(self.policy.entropy(k, n) for k, n in self.sizes.items() if n > 1) / total if total else 0.0

    def chosen(self) -> tuple[dict[str, Any], NetworkSpec]:
        """The controller's most likely architecture: its decisions and its spec."""
        params = {c.name: _suggestible(c.options[int(np.argmax(self.policy.probs(c.name, len(c.options))))])
                  for c in self.space.choices}
        return params, self.space.member(params).spec

    def member(self, picked: Mapping[str, int]) -> NetworkSpec:
        """The member of option indices ``picked``."""
        return self.space.member(self._params(picked)).spec

    def _params(self, picked: Mapping[str, int]) -> dict[str, Any]:
        return {c.name: _suggestible(c.options[picked[c.name]]) for c in self.space.choices}

    def draw(self, step: int, total: int) -> Draw:
        """Step ``step``'s child (of ``total`` steps), with the warm-ups of that step."""
        rng = np.random.default_rng([self.seed, step])
        picked = {name: int(rng.choice(n, p=self.policy.probs(name, n))) for name, n in self.sizes.items()}
        p_ops = linear_decay(step, int(self.cfg.op_warmup * total))
        p_filters = linear_decay(step, int(self.cfg.filter_warmup * total))
        widened = dict(picked)
        every_op: list[Any] = []
        for c in self.space.choices:  # one coin per decision, drawn whatever the probabilities
            coin = rng.random()
            if c.field in FILTER_FIELDS and coin < p_filters:
                widened[c.name] = max(range(len(c.options)), key=lambda i, c=c: _magnitude(c.options[i]))
            elif c.field == "kind" and coin < p_ops:
                every_op.append(c)
        params = self._params(widened)
        train_spec = self.space.member(params).spec
        all_ops: dict[tuple[int, int], dict[str, NetworkSpec]] = {}
        for c in every_op:
            variants = {kind: self.space.member({**params, c.name: kind}).spec for kind in c.options}
            first = sum(b.repeats for b in train_spec.stages[c.stage][:c.row])
            for i in range(first, first + train_spec.stages[c.stage][c.row].repeats):
                all_ops[(c.stage, i)] = variants
        return Draw(picked, self.member(picked), train_spec, all_ops)

    def learning_rate(self, step: int, total: int) -> float:
        """The controller's learning rate at ``step``: 0 during the delay, then growing
        exponentially by ``lr_growth`` to the end."""
        start = int(self.cfg.delay * total)
        if step < start:
            return 0.0
        return self.cfg.controller_lr * self.cfg.lr_growth ** ((step - start) / max(1, total - start))

    # -- one step --------------------------------------------------------------------------------
    def __call__(self, trainer: Trainer, batch: Batch) -> StepOutput:
        supernet = unwrap(trainer.model)
        if not isinstance(supernet, (Supernet, SSDLiteSupernet)):
            raise TypeError(f"TunasStep trains a Supernet or an SSDLiteSupernet, got {type(supernet).__name__}")
        step, total = trainer.global_step, trainer.total_steps
        d = self.draw(step, total)
        child = supernet.child_spec(d.train_spec, regularize=True)
        all_ops = {at: {k: supernet.child_spec(v, regularize=True) for k, v in variants.items()}
                   for at, variants in d.all_ops.items()}

        def shared() -> StepOutput:
            return self.signal.loss(trainer, trainer.net(batch.images, child=child, all_ops=all_ops or None), batch)

        out = accumulate_step(trainer, [shared])
        lr = self.learning_rate(step, total)
        if lr == 0.0:  # the controller does not learn yet: no reward is scored
            return out
        size = round(self.cfg.reward_batch * trainer.cfg.data.batch_size)
        accuracy = self.signal.quality(trainer, supernet, supernet.child_spec(d.spec), size, len(self.history))
        cost = float(self.cost(d.spec))
        reward = tunas_reward(accuracy, cost, self.target, self.cfg.beta, self.cfg.reward)
        picked = {name: (i, self.sizes[name]) for name, i in d.picked.items()}
        advantage = self.policy.update(picked, reward, lr=lr, decay=self.cfg.baseline_momentum,
                                       entropy_weight=self.cfg.entropy_weight)
        entropy = self.entropy()
        self.history.append({"step": step, "reward": reward, "accuracy": accuracy, "cost": cost,
                             "entropy": entropy, "advantage": advantage, "lr": lr})
        parts = dict(out.parts)
        parts.update(reward=torch.tensor(reward), entropy=torch.tensor(entropy))
        return StepOutput(out.loss, out.logits, parts)

    def progress(self) -> str:
        """For the training loop's progress line: the recent mean reward, accuracy and cost."""
        if not self.history:
            return "controller waiting (delay)"
        recent = self.history[-50:]
        mean = {k: sum(h[k] for h in recent) / len(recent) for k in ("reward", "accuracy", "cost")}
        return (f"reward {mean['reward']:.3f} acc {mean['accuracy']:.3f} cost {mean['cost']:.3g} "
                f"entropy {self.history[-1]['entropy']:.2f}")

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The controller (logits, baseline, Adam's moments) and the history: plain data."""
        return {"policy": self.policy.state_dict(), "history": list(self.history), "elapsed": self.elapsed()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict``'s state."""
        self.policy.load_state_dict(state["policy"])
        self.history = list(state["history"])
        self.earlier = dict(state.get("elapsed", {"wall_s": 0.0, "cpu_s": 0.0}))  # older checkpoints: unknown, 0
        self.session = (time.monotonic(), time.process_time())

    def elapsed(self) -> dict[str, float]:
        """Wall and CPU seconds of the search so far, over every session."""
        wall, cpu = self.session
        return {"wall_s": self.earlier["wall_s"] + time.monotonic() - wall,
                "cpu_s": self.earlier["cpu_s"] + time.process_time() - cpu}


def block_ops(spec: Any) -> str:
    """The blocks' ops in order, e.g. ``ir ir er ...`` (a detector's: its backbone's; for a record)."""
    return " ".join(k for _, k in sorted(block_kinds(getattr(spec, "backbone", spec)).items()))


def member_cost(cfg: SearchConfig, latency: Callable[[Any], float]) -> Callable[[NetworkSpec], float]:
    """A member's cost as a trial of ``cfg`` costs it: the classifier's, or the whole detector's
    (``search.detector``; MACs counted once per member, as a forward pass on the meta device)."""
    from effml.search.study.detection_proxy import search_network

    if cfg.search.detector is None:
        return latency
    return functools.lru_cache(maxsize=4096)(lambda spec: latency(search_network(cfg, spec)))


def write_result(out: Path, record: Mapping[str, Any], spec_json: str) -> None:
    """``tunas.json`` (the record), ``found_model.json`` (the spec) and ``tunas.png`` in ``out``."""
    atomic_write_text(out / FOUND_SPEC, spec_json)
    atomic_write_text(out / RESULT_JSON, json.dumps(record, indent=1))
    plot_tunas(record, out / PLOT)


def plot_tunas(record: Mapping[str, Any], path: Path) -> None:
    """Reward, held-out accuracy, cost (with the target) and the controller's entropy per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = record["history"]
    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.0))
    for ax, key, title in zip(axes, ("reward", "accuracy", "cost", "entropy"),
                              ("reward", f"held-out {record.get('signal', 'top-1')} (batch)", f"cost ({record['unit']})",
                               "entropy / uniform")):
        values = np.array([h[key] for h in history])
        if len(values):
            window = max(1, len(values) // 20)
            ax.plot(steps, values, ".", ms=2, alpha=0.3)
            ax.plot(steps[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid"))
        ax.set(title=title, xlabel="step")
    axes[2].axhline(record["target"], color="k", lw=0.8, ls="--")
    axes[3].set_ylim(0, 1.05)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclasses.dataclass
class TunasResult:
    """What a TuNAS search found and where it wrote it."""

    spec: NetworkSpec
    params: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    run_dir: Path
    trial: int  # the study's trial that records it


def check_tunas(cfg: SearchConfig, space: Any) -> LatencyModel:
    """Everything a TuNAS search needs, checked before any training; the cost model."""
    from effml.search.study.cost import LatencyModel
    from effml.search.study.detection_proxy import check_task, search_network
    from effml.search.study.runner import check_classes

    o = cfg.objective
    if not isinstance(space, SearchSpace):
        raise SearchError(f"search.strategy=tunas shares weights across a space of block choices; space "
                          f"{space.name!r} is not one (use a black-box strategy)")
    if cfg.search.detector not in (None, "ssdlite"):
        raise SearchError(f"search.strategy=tunas searches classifiers and SSDLite detectors (search.detector="
                          f"ssdlite, as MobileDets did); search.detector={cfg.search.detector} needs a black-box "
                          f"strategy")
    check_task(cfg)
    if o.kind != "reward" or o.target is None:
        raise SearchError("search.strategy=tunas needs objective.kind=reward and objective.target (T0: ms with "
                          "objective.latency=table, millions of MACs with objective.latency=flops)")
    if o.latency == "measured":
        raise SearchError("search.strategy=tunas costs a child at every step: objective.latency=measured would "
                          "time thousands of networks; use objective.latency=table (a table of this space on "
                          "this machine: effml search latency-table) or flops")
    if not cfg.proxy.data.holdout:
        raise SearchError("search.strategy=tunas rewards the controller with held-out accuracy: set "
                          "proxy.data.holdout (e.g. 0.1); the search never sees val")
    check_classes(cfg, space)
    latency = LatencyModel(o)  # a table of another machine fails here
    latency.check_space(space)  # and one of another space here
    smallest = latency(search_network(cfg, space.smallest().spec))
    if o.target < smallest:
        raise SearchError(f"objective.target={o.target} {latency.unit} is below the smallest member's cost "
                          f"({smallest:.4g} {latency.unit}) in space {space.name!r}; no member can meet it")
    return latency


def run_tunas(cfg: SearchConfig, space: SearchSpace, *, resume: bool = False, quiet: bool = False,
              echo: Callable[[str], None] = print) -> TunasResult:
    """Search ``space`` with TuNAS as ``cfg`` says: the supernet trains with the ``proxy`` recipe in
    ``proxy.run.dir`` (its checkpoint holds the controller too; ``resume`` continues exactly); the
    controller's most likely architecture is scored (held-out top-1 with the shared weights, BN
    re-estimated), recorded as a trial of the study (so ``effml search report|export`` take it) and
    written with the history: ``found_model.json``, ``tunas.json``, ``tunas.png``."""
    import optuna

    from effml.measure.latency import measure_latency
    from effml.search.oneshot.bignas import TrainedSupernet
    from effml.search.study.cost import spec_cost
    from effml.search.study.detection_proxy import score, score_metric
    from effml.search.study.storage import open_study
    from effml.train.config import config_to_yaml
    from effml.train.engine import fit
    from effml.train.trainer import Trainer
    from effml.zoo import spec_to_json
    from effml.zoo.kinds import spec_to_dict

    start, cpu = time.monotonic(), time.process_time()
    latency = check_tunas(cfg, space)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, space, resume=resume)  # a finished study of this name is refused before training
    training = training_config(cfg, space)
    detector = cfg.search.detector
    supernet = build_supernet(training, space, cfg.tunas.kernels, zero_init=cfg.tunas.zero_init_last_bn,
                              detector=detector)
    signal = (ClassificationSignal(training.train.label_smoothing) if detector is None
              else DetectionSignal(cfg.tunas.detection_signal))
    step = TunasStep(space, cfg.tunas, member_cost(cfg, latency), cfg.objective.target, seed=cfg.search.seed,
                     signal=signal)
    run = fit(training, model=supernet, step=step, resume=resume, quiet=quiet)
    atomic_write_text(Path(run.run_dir) / SEARCH_YAML, config_to_yaml(cfg))
    params, spec = step.chosen()
    out = Path(run.run_dir)

    trainer = Trainer(training, model=supernet)
    trained = TrainedSupernet(supernet, training, out, trainer, {}, CALIBRATION_BATCHES)  # type: ignore[arg-type]
    spec = supernet.child_spec(spec)  # a detector's spec for a detection supernet
    child = trained.calibrated(spec)
    accuracy = score(trained.evaluate(child, spec.resolution, "holdout"), score_metric(cfg))  # a fraction
    cost = latency(spec)
    metrics: dict[str, Any] = {**spec_cost(spec), "accuracy": accuracy, "reward": None}
    metrics["latency_ms" if latency.unit == "ms" else "latency_mmacs"] = cost
    metrics["reward"] = tunas_reward(accuracy, cost, cfg.objective.target, cfg.tunas.beta, cfg.tunas.reward)
    if latency.unit == "ms":  # the table's prediction against a measurement of the found network
        o = cfg.objective
        metrics["measured_latency_ms"] = measure_latency(
            child, spec.resolution, runtime=o.runtime, threads=o.threads, batch_size=o.batch_size,
            in_channels=spec.in_channels).median_ms
    number = _record_trial(study, space, params, spec_to_dict(spec), metrics, out, run.global_step)
    probs = step.probabilities()
    record = {"space": space.name, "steps": run.global_step, "target": cfg.objective.target, "unit": latency.unit,
              "signal": step.signal.name,
              "reward": cfg.tunas.reward, "beta": cfg.tunas.beta,
              "found": {"params": params, "blocks": block_ops(spec), "metrics": metrics},
              "distributions": {c.name: {str(_suggestible(o)): float(p) for o, p in zip(c.options, probs[c.name])}
                                for c in space.choices},
              "history": step.history, **elapsed(start, cpu, step)}
    write_result(out, record, spec_to_json(spec))
    metric = score_metric(cfg)
    shown = f"top-1 {100 * accuracy:.1f}%" if metric == "top1" else f"{metric} {100 * accuracy:.1f}"
    echo(f"TuNAS: {run.global_step} steps; found {block_ops(spec)}: held-out {shown}, "
         f"{cost:.4g} {latency.unit} (target {cfg.objective.target}), reward {metrics['reward']:.4f}; "
         f"trial {number} of study {cfg.search.study!r}; {out / FOUND_SPEC}")
    return TunasResult(spec, params, metrics, step.history, out, number)


def training_config(cfg: SearchConfig, space: SearchSpace) -> Any:
    """The supernet's training run: the ``proxy`` recipe at the space's largest resolution."""
    from effml.train.config import config_from_dict

    resolution = max(space.largest().spec.resolution, space.base.resolution)
    return config_from_dict({"data": {"image_size": resolution}}, cfg.proxy, source="search.strategy=tunas")


def build_supernet(training: Any, space: SearchSpace, kernels: str = "shared", *, zero_init: bool = False,
                   detector: str | None = None) -> Supernet | SSDLiteSupernet:
    """The supernet of ``space`` (``kernels``: ``tunas.kernels``; ``detector``: ``search.detector``,
    SSDLite over the space's backbones) with the training config's dropout, drop path and BN
    settings, initialised from ``train.seed``; ``zero_init``: every residual block starts as the
    identity (``tunas.zero_init_last_bn``; a resumed run's checkpoint then replaces it)."""
    from effml.train.trainer import preserved_global_state, seed_everything

    with preserved_global_state():
        seed_everything(training.train.seed)
        m = training.model
        kind = Supernet if detector is None else SSDLiteSupernet
        supernet = kind(space, kernels=kernels, dropout=m.dropout, drop_path=m.drop_path,
                        bn_momentum=m.bn_momentum, bn_eps=m.bn_eps)
    if zero_init:
        zero_init_last_bn(supernet)
    return supernet


def is_tunas_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is a finished TuNAS search's run directory (its search config and its
    result beside the supernet's weights)."""
    return (Path(run_dir) / SEARCH_YAML).is_file() and (Path(run_dir) / RESULT_JSON).is_file()


def load_tunas_supernet(run_dir: str | Path) -> Any:
    """A finished TuNAS search's supernet (its final weights) as a ``TrainedSupernet`` over its
    training data, for scoring children (``calibrated``: BN re-estimated on ``CALIBRATION_BATCHES``)."""
    from effml.models.weights import load_weights
    from effml.search.oneshot.bignas import TrainedSupernet
    from effml.search.study.config import build_space
    from effml.train.config import load_config
    from effml.train.run_dir import WEIGHTS_RAW, read_run_info
    from effml.train.trainer import Trainer

    run_dir = Path(run_dir)
    path = run_dir / SEARCH_YAML
    if not path.is_file():
        raise SearchError(f"{path} is missing: {run_dir} is not a finished TuNAS search (effml search CONFIG "
                          f"search.strategy=tunas writes it when the search ends)")
    cfg = load_config(path, schema=SearchConfig, saved=True)
    space = build_space(cfg)
    training = training_config(cfg, space)
    supernet = build_supernet(training, space, cfg.tunas.kernels, detector=cfg.search.detector)
    load_weights(supernet, run_dir / WEIGHTS_RAW)
    trainer = Trainer(training, model=supernet)
    supernet.eval()
    return TrainedSupernet(supernet, training, run_dir, trainer, read_run_info(run_dir), CALIBRATION_BATCHES)


def load_trained_supernet(run_dir: str | Path) -> Any:
    """A trained supernet of either kind as a ``TrainedSupernet``: a finished TuNAS search's (its
    ``proxy.run.dir``) or one ``effml supernet train`` wrote."""
    from effml.search.oneshot.bignas import load_supernet

    return load_tunas_supernet(run_dir) if is_tunas_run(run_dir) else load_supernet(run_dir)


def _record_trial(study: Any, space: SearchSpace, params: dict[str, Any], spec: dict[str, Any],
                  metrics: dict[str, Any], run_dir: Path, steps: int) -> int:
    """The found architecture as a finished trial of ``study`` (once per run and step count); its number."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    source = {"run_dir": str(run_dir.absolute()), "steps": steps}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("tunas") == source:
            return t.number
    distributions = {c.name: CategoricalDistribution([_suggestible(o) for o in c.options]) for c in space.choices}
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=distributions, values=[metrics["reward"]],
        user_attrs={"spec": spec, "metrics": metrics, "overrides": [], "tunas": source}))
    return study.get_trials(deepcopy=False)[-1].number


def elapsed(start: float, cpu: float, step: TunasStep | None = None) -> dict[str, float]:
    """Wall and CPU seconds since ``start`` / ``cpu`` (``time.monotonic`` / ``time.process_time``), plus
    those of a resumed search's earlier sessions (``step``'s)."""
    before = step.earlier if step is not None else {"wall_s": 0.0, "cpu_s": 0.0}
    return {"wall_s": round(before["wall_s"] + time.monotonic() - start, 1),
            "cpu_s": round(before["cpu_s"] + time.process_time() - cpu, 1)}

