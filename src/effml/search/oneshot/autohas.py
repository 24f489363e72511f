"""AutoHAS (Dong, Tan, Yu, Peng, Gabrys and Le, arXiv 2006.03656): architectures and training
hyper-parameters searched together in one training run, with weights shared by all of them.

The later ("Efficient") version of the paper, our default, alternates two things at every step
of one training run of a supernet:

(a) a shared-weight step: the controller samples an architecture and hyper-parameter values
    (``joint_space``), and the shared weights take one ordinary optimizer step of that child with
    those values (its optimizer, learning rate times the schedule, weight decay, label smoothing,
    mixup, dropout);
(b) a controller step: another sample; *temporary weights*, one virtual step of that child with
    its values away from the shared ones (``effml.train.step.temporary_weights``: the real
    weights, optimizer states and BN buffers are untouched), are scored on a held-out batch of
    training images; that accuracy is the reward of a REINFORCE update of the controller
    (``policy.FactorizedPolicy``: moving-average baseline, entropy bonus).

Learning rate and weight decay do not change a forward pass: without (b)'s look-ahead they would
get no signal. The first version ("Differentiable", ``variant: differentiable``) instead mixes the
bases of the learning rate and weight decay with the softmax probabilities and learns those by
the gradient of the held-out loss through one unrolled SGD step (a hypergradient); the other
decisions stay REINFORCE. At the end, the most probable architecture and the hyper-parameters'
mixtures are the result: a spec and a training config that ``effml train`` runs from scratch.

Two readings of ours, marked [D]: the reward's forward pass normalises with the held-out batch's
own statistics (a supernet's running statistics mix every child's), and the temporary step uses
the batch the shared step just trained on. No code was released with the paper.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch.optim import Optimizer

from effml.errors import EffmlError
from effml.files import atomic_write_text
from effml.search.oneshot.supernet import Supernet
from effml.search.spaces.catalog import space_for
from effml.search.spaces.joint import JointSpace
from effml.search.study.policy import FactorizedPolicy
from effml.spec import NetworkSpec
from effml.train.config import (
    CONFIG_SCHEMA,
    Config,
    InputPath,
    config_from_dict,
    config_to_yaml,
    load_config,
    training_config,
)
from effml.train.data import num_classes, train_loader
from effml.train.distributed import unwrap
from effml.train.engine import RunResult, fit
from effml.train.objective import Batch, StepOutput, classification_loss
from effml.train.optim import build_optimizer
from effml.train.step import (
    FunctionalModel,
    ReportingStep,
    StatefulStep,
    TrainingDiverged,
    accumulate_step,
    temporary_weights,
)
from effml.train.trainer import Trainer, preserved_global_state, seed_everything
from effml.zoo import spec_to_json

# Decisions the differentiable variant learns by the hypergradient: the update rule's.
HYPERGRADIENT_KEYS = ("optim.lr", "optim.weight_decay")
RESULT_JSON, CHOSEN_SPEC, CHOSEN_CONFIG, PLOT = "autohas.json", "chosen_model.json", "chosen.yaml", "autohas.png"


@dataclass(config=CONFIG_SCHEMA)
class AutoHASSection:
    """The joint space and the controller; the rest of the file is an ordinary training config
    (the shared weights' schedule, data, held-out split)."""

    space: Annotated[str, Field(min_length=1), InputPath((".json", ".yaml", ".yml"))] = "autohas"
    """a named joint space (effml search show autohas) or a space file with choices and hyper"""
    bases: Annotated[int, Field(ge=2)] = 5
    """K basis values per continuous hyper-parameter"""
    variant: Literal["reinforce", "differentiable"] = "reinforce"
    """the later paper version, or v1's hypergradient for lr and weight decay"""
    controller_lr: Annotated[float, Field(gt=0)] = 1.0
    """REINFORCE step on the logits, per unit of reward (accuracy in [0, 1])"""
    baseline_decay: Annotated[float, Field(ge=0, lt=1)] = 0.95
    """moving average of the reward"""
    entropy_weight: Annotated[float, Field(ge=0)] = 0.003
    """entropy bonus: keeps exploring"""
    hyper_lr: Annotated[float, Field(gt=0)] = 1.0
    """differentiable variant: gradient step on the lr / weight-decay logits"""
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.5
    """shared-weight steps under the uniform policy before the controller learns"""
    reward_images: Annotated[int, Field(ge=1)] = 256
    """held-out training images per reward"""


@dataclass(config=CONFIG_SCHEMA)
class AutoHASConfig(Config):
    """A training config plus the ``autohas`` section."""

    autohas: AutoHASSection = field(default_factory=AutoHASSection)


def load_autohas_config(path: str | Path | None, overrides: list[str] = (), base: Any = None, *,
                        saved: bool | None = None) -> AutoHASConfig:
    """Read an AutoHAS YAML (a training config with an ``autohas`` section) and apply overrides."""
    return load_config(path, overrides, base, saved=saved, schema=AutoHASConfig)


def joint_space(cfg: AutoHASConfig, classes: int) -> JointSpace:
    """The config's joint space for ``classes`` classes at ``data.image_size``."""
    return JointSpace.from_space(space_for(cfg.autohas.space, classes, cfg.data.image_size), cfg.autohas.bases)


class AutoHASStep(ReportingStep, StatefulStep):
    """One AutoHAS step over the Trainer's supernet: a shared-weight step, then (after warm-up) a
    controller step. Its state (the controller, the extra optimizers, the history) goes into the
    Trainer's checkpoint, so ``--resume`` continues exactly; samples of step n come from a
    generator seeded by (seed, n)."""

    def __init__(self, space: JointSpace, section: AutoHASSection, seed: int = 0) -> None:
        self.space, self.s, self.seed = space, section, seed
        self.sizes = space.decisions()
        self.policy = FactorizedPolicy()
        self.history: list[dict[str, Any]] = []
        self._optimizers: dict[str, Optimizer] = {}
        self._saved_optimizers: dict[str, Any] = {}
        keys = {h.key for h in space.hyper}
        self.learned_by_gradient = (tuple(k for k in HYPERGRADIENT_KEYS if k in keys)
                                    if section.variant == "differentiable" else ())
        for key in self.learned_by_gradient:
            if not next(h for h in space.hyper if h.key == key).continuous:
                raise EffmlError(f"autohas.variant=differentiable: {key} must be a float range (its bases are "
                                 f"mixed by the softmax), not categorical options")

    # -- the controller ------------------------------------------------------------------------
    def probabilities(self) -> dict[str, np.ndarray]:
        """Every decision's current distribution."""
        return {name: self.policy.probs(name, n) for name, n in self.sizes.items()}

    def entropy(self) -> float:
        """The policy's entropy relative to the uniform one's (1: uniform, 0: every decision certain)."""
        total = sum(np.log(n) for n in self.sizes.values() if n > 1)
        return float(sum(self.policy.entropy(k, n) for k, n in self.sizes.items() if n > 1) / total)

    def _sample(self, rng: np.random.Generator) -> dict[str, int]:
        return {name: int(rng.choice(n, p=self.policy.probs(name, n))) for name, n in self.sizes.items()}

    def progress(self) -> str:
        """For the training loop's progress line: the recent mean reward and the entropy."""
        if not self.history:
            return "controller warming up"
        recent = [h["reward"] for h in self.history[-50:]]
        return f"reward {sum(recent) / len(recent):.3f} entropy {self.history[-1]['entropy']:.2f}"

    def chosen(self) -> tuple[NetworkSpec, dict[str, Any], dict[str, Any]]:
        """The result: the most probable architecture, the hyper-parameters' mixtures."""
        return self.space.final(self.probabilities())

    # -- one step --------------------------------------------------------------------------------
    def __call__(self, trainer: Trainer, batch: Batch) -> StepOutput:
        supernet = unwrap(trainer.model)
        if not isinstance(supernet, Supernet):
            raise TypeError(f"AutoHASStep trains a Supernet, got {type(supernet).__name__}")
        rng = np.random.default_rng([self.seed, trainer.global_step])
        factor = trainer.scheduler.get_last_lr()[0] / trainer.cfg.optim.lr  # the schedule's shape
        spec, hyper = self._decode(self._sample(rng))
        optimizer = self._optimizer(trainer, hyper)
        lr, wd = self._rates(trainer, hyper, factor)
        _set_rates(optimizer, lr, wd)

        def shared() -> StepOutput:
            return StepOutput(*self._loss(trainer, trainer.net, batch, spec, hyper, rng), {})

        try:
            out = accumulate_step(trainer, [shared], optimizer=optimizer)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e} (sampled {hyper})") from None
        parts: dict[str, torch.Tensor] = {"ce": out.loss}
        warmup = int(self.s.warmup_epochs * trainer.steps_per_epoch)
        if trainer.global_step >= warmup:
            parts.update(self._controller_step(trainer, supernet, batch, factor, rng))
        return StepOutput(out.loss, out.logits, parts)

    def _decode(self, picked: Mapping[str, int]) -> tuple[NetworkSpec, dict[str, Any]]:
        spec, hyper = self.space.decode(picked)
        for key in self.learned_by_gradient:  # v1: the softmax mixture, not a sample
            basis = next(h for h in self.space.hyper if h.key == key)
            hyper[key] = basis.mixture(self.policy.probs(key, self.sizes[key]))
        return spec, hyper

    def _rates(self, trainer: Trainer, hyper: Mapping[str, Any], factor: float) -> tuple[float, float]:
        o = trainer.cfg.optim
        return hyper.get("optim.lr", o.lr) * factor, hyper.get("optim.weight_decay", o.weight_decay)

    def _optimizer(self, trainer: Trainer, hyper: Mapping[str, Any]) -> Optimizer:
        """The optimizer of the sampled kind, over the shared weights (one per kind, each with its
        own state; the configured kind is the Trainer's own)."""
        name = hyper.get("optim.name", trainer.cfg.optim.name)
        if name == trainer.cfg.optim.name:
            return trainer.optimizer
        if name not in self._optimizers:
            opt = build_optimizer(trainer.model, dataclasses.replace(trainer.cfg.optim, name=name))
            if name in self._saved_optimizers:
                opt.load_state_dict(self._saved_optimizers.pop(name))
            self._optimizers[name] = opt
        return self._optimizers[name]

    def _child(self, supernet: Supernet, spec: NetworkSpec, hyper: Mapping[str, Any], train: bool) -> NetworkSpec:
        """The child as it runs: the supernet's conventions; in a training pass the sampled dropout
        and the configured drop path, none in a reward pass."""
        child = supernet.child_spec(spec)
        if train:
            child = child.replace(dropout=hyper.get("model.dropout", supernet.spec.dropout),
                                  drop_path=supernet.spec.drop_path)
        return child

    def _loss(self, trainer: Trainer, model: Any, batch: Batch, spec: NetworkSpec, hyper: Mapping[str, Any],
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampled child's training loss on ``batch`` with the sampled mixup and label smoothing."""
        images, targets = batch.images, batch.targets
        alpha = float(hyper.get("data.mixup", 0.0))
        # Mixup (Zhang et al., arXiv 1710.09412) with the sampled alpha, drawn from the step's generator
        # so that the temporary-weight and hypergradient passes see the same mixup and a resume
        # replays it. Not torchvision's v2.MixUp, which the Trainer uses: it draws lambda from torch's
        # global generator and always pairs each image with its neighbour (a roll), where this pairs
        # it with a random partner; the pairing cannot be given to it, and every AutoHAS result
        # (README, experiments/autohas.py) would change with it.
        if alpha > 0:
            lam = float(rng.beta(alpha, alpha))
            perm = torch.as_tensor(rng.permutation(len(images)), device=images.device)
            soft = targets if targets.dim() > 1 else F.one_hot(targets, trainer.num_classes).float()
            images, targets = lam * images + (1 - lam) * images[perm], lam * soft + (1 - lam) * soft[perm]
        child = self._child(unwrap(trainer.model), spec, hyper, train=True)
        logits = model(images, child=child)
        smoothing = float(hyper.get("train.label_smoothing", trainer.cfg.train.label_smoothing))
        return classification_loss(logits, targets, smoothing), logits

    def _holdout_batch(self, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
        """The reward's ``reward_images`` held-out training images: the next window of the split,
        chosen by the number of controller steps so far (so a resumed run reads the same ones)."""
        dataset = trainer.dataset("holdout")
        n = min(self.s.reward_images, len(dataset))
        start = len(self.history) * n % len(dataset)
        indices = [(start + i) % len(dataset) for i in range(n)]
        x, y = next(iter(train_loader(dataset, indices, n, trainer.cfg.data.workers)))[:2]
        return x.to(trainer.device), y.to(trainer.device)

    def _controller_step(self, trainer: Trainer, supernet: Supernet, batch: Batch, factor: float,
                         rng: np.random.Generator) -> dict[str, torch.Tensor]:
        picked = self._sample(rng)
        spec, hyper = self._decode(picked)
        optimizer = self._optimizer(trainer, hyper)
        lr, wd = self._rates(trainer, hyper, factor)
        step_rng = np.random.default_rng([self.seed, trainer.global_step, 1])  # the same mixup twice

        def loss(model: Any, b: Batch) -> torch.Tensor:
            return self._loss(trainer, model, b, spec, hyper, step_rng)[0]

        weights = temporary_weights(trainer, batch, lr=lr, weight_decay=[wd, 0.0], optimizer=optimizer, loss=loss)
        x, y = self._holdout_batch(trainer)
        reward_spec = self._child(supernet, spec, hyper, train=False)
        with torch.no_grad():
            logits = FunctionalModel(supernet, weights)(x, child=reward_spec)
        reward = (logits.argmax(1) == y).float().mean().item()
        learned = {k: (i, self.sizes[k]) for k, i in picked.items() if k not in self.learned_by_gradient}
        advantage = self.policy.update(learned, reward, lr=self.s.controller_lr, decay=self.s.baseline_decay,
                                       entropy_weight=self.s.entropy_weight)
        if self.learned_by_gradient:
            step_rng = np.random.default_rng([self.seed, trainer.global_step, 1])
            self._hypergradient(trainer, supernet, batch, spec, hyper, factor, (x, y), step_rng)
        entropy = self.entropy()
        self.history.append({"step": trainer.global_step, "reward": reward, "advantage": advantage,
                             "entropy": entropy, "sample": {k: _plain(v) for k, v in hyper.items()}})
        return {"reward": torch.tensor(reward), "entropy": torch.tensor(entropy)}

    def _hypergradient(self, trainer: Trainer, supernet: Supernet, batch: Batch, spec: NetworkSpec,
                       hyper: Mapping[str, Any], factor: float, holdout: tuple[torch.Tensor, torch.Tensor],
                       rng: np.random.Generator) -> None:
        """v1: the held-out loss after one unrolled SGD step, ``W - lr (g + wd W)``, with lr and wd
        the softmax mixtures of their bases, differentiated with respect to their logits."""
        logits = {k: torch.tensor(self.policy.probs(k, self.sizes[k]), dtype=torch.float64).log().requires_grad_()
                  for k in self.learned_by_gradient}
        rates = {}
        for h in self.space.hyper:
            if h.key in logits:
                p = logits[h.key].softmax(0)
                b = torch.tensor(h.values, dtype=torch.float64)
                rates[h.key] = (p * b.log()).sum().exp() if h.log else (p * b).sum()
        o = trainer.cfg.optim
        lr = rates.get("optim.lr", torch.tensor(hyper.get("optim.lr", o.lr), dtype=torch.float64)) * factor
        wd = rates.get("optim.weight_decay", torch.tensor(hyper.get("optim.weight_decay", o.weight_decay),
                                                          dtype=torch.float64))
        model = trainer.model
        params = dict(model.named_parameters())
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}  # the real ones stay untouched
        loss, _ = self._loss(trainer, FunctionalModel(model, {**params, **buffers}), batch, spec, hyper, rng)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        weights = dict(buffers)
        for (name, p), g in zip(params.items(), grads):
            g = torch.zeros_like(p) if g is None else g.detach()
            decay = wd.float() * p.detach() if p.ndim > 1 else 0.0
            weights[name] = p.detach() - lr.float() * (g + decay)
        x, y = holdout
        child = self._child(supernet, spec, hyper, train=False)
        val_loss = F.cross_entropy(FunctionalModel(supernet, weights)(x, child=child), y)
        grads = torch.autograd.grad(val_loss, list(logits.values()), allow_unused=True)
        for (key, z), g in zip(logits.items(), grads):
            if g is not None:
                self.policy.logits[key] = z.detach().numpy() - self.s.hyper_lr * g.numpy()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The controller, the extra optimizers' states and the history (plain data and tensors)."""
        optimizers = {**self._saved_optimizers, **{k: o.state_dict() for k, o in self._optimizers.items()}}
        return {"policy": self.policy.state_dict(), "optimizers": optimizers, "history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict``'s state."""
        self.policy.load_state_dict(state["policy"])
        self._optimizers = {}
        self._saved_optimizers = dict(state["optimizers"])
        self.history = list(state["history"])


def _set_rates(optimizer: Optimizer, lr: float, weight_decay: float) -> None:
    """The learning rate on every group, the weight decay on the decayed one (``param_groups``'
    first group: weights, not BatchNorm parameters and biases)."""
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        group["weight_decay"] = weight_decay if i == 0 else 0.0


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


# -- end to end ----------------------------------------------------------------------------------

def build_supernet(cfg: AutoHASConfig, space: JointSpace) -> Supernet:
    """The supernet of the joint space's architecture part, with ``cfg.model``'s settings."""
    m = cfg.model
    return Supernet(space.arch, dropout=m.dropout, drop_path=m.drop_path, bn_momentum=m.bn_momentum, bn_eps=m.bn_eps)


@dataclasses.dataclass
class AutoHASResult:
    """What a search found and where it wrote it."""

    run: RunResult
    spec: NetworkSpec
    hyper: dict[str, Any]
    distributions: dict[str, dict[str, float]]
    history: list[dict[str, Any]]
    run_dir: Path
    config_path: Path
    cpu_s: float
    wall_s: float


def run_autohas(cfg: AutoHASConfig, *, resume: bool = False, quiet: bool = False) -> AutoHASResult:
    """Search as ``cfg`` says (a run directory like ``effml train``'s whose checkpoint holds the
    controller too; ``resume`` continues it exactly); then write the result: ``autohas.json``
    (distributions, history, choice), ``chosen_model.json`` and ``chosen.yaml`` (a config that
    ``effml train`` runs from scratch) and ``autohas.png``."""
    if cfg.data.holdout == 0:
        raise EffmlError("data.holdout is 0: AutoHAS rewards the controller with the accuracy on a held-out "
                         "part of the training images; set data.holdout=0.1")
    if cfg.data.mixup or cfg.data.cutmix:
        raise EffmlError("data.mixup / data.cutmix are set: AutoHAS applies mixup itself (search it as the "
                         "hyper-parameter data.mixup); set both to 0")
    start, cpu = time.monotonic(), time.process_time()
    with preserved_global_state():
        seed_everything(cfg.train.seed)
        space = joint_space(cfg, num_classes(cfg))
        supernet = build_supernet(cfg, space)
    step = AutoHASStep(space, cfg.autohas, cfg.train.seed)
    run = fit(cfg, model=supernet, step=step, resume=resume, quiet=quiet)
    spec, hyper, _ = step.chosen()
    probs = step.probabilities()
    distributions = {name: {str(_plain(o)): float(p) for o, p in zip(space.options(name), probs[name])}
                     for name in space.decisions()}
    out = Path(run.run_dir)
    atomic_write_text(out / CHOSEN_SPEC, spec_to_json(spec))
    config_path = out / CHOSEN_CONFIG
    atomic_write_text(config_path, config_to_yaml(retrain_config(cfg, out / CHOSEN_SPEC, spec, hyper)))
    cpu_s, wall_s = time.process_time() - cpu, time.monotonic() - start
    if resume:  # the time of the sessions before this one
        previous = json.loads((out / RESULT_JSON).read_text()) if (out / RESULT_JSON).is_file() else {}
        cpu_s += previous.get("cpu_s", 0.0)
        wall_s += previous.get("wall_s", 0.0)
    record = {"variant": cfg.autohas.variant, "space": space.arch.name, "steps": run.global_step,
              "controller_steps": len(step.history), "cpu_s": round(cpu_s, 1), "wall_s": round(wall_s, 1),
              "chosen": {"spec": json.loads(spec_to_json(spec)), "hyper": hyper},
              "distributions": distributions, "history": step.history}
    atomic_write_text(out / RESULT_JSON, json.dumps(record, indent=1))
    plot_autohas(record, out / PLOT)
    return AutoHASResult(run, spec, hyper, distributions, step.history, out, config_path, cpu_s, wall_s)


def retrain_config(cfg: AutoHASConfig, spec_path: Path, spec: NetworkSpec, hyper: Mapping[str, Any]) -> Config:
    """A plain training config of the chosen member from scratch: the AutoHAS config without its
    ``autohas`` section, the chosen spec and hyper-parameters, on every training image."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in hyper.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = _plain(value)
    sections.setdefault("model", {}).update({"name": str(Path(spec_path).absolute()), "weights": None})
    sections.setdefault("data", {}).update({"image_size": spec.resolution, "holdout": 0.0})
    sections["run"] = {"dir": str(Path(cfg.run.dir) / "retrain")}
    return config_from_dict(sections, training_config(cfg))


def plot_autohas(record: Mapping[str, Any], path: Path) -> None:
    """The search curve (reward, moving average), the policy's entropy and the learned
    distributions of the hyper-parameters, in one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = record["history"]
    hyper = [k for k in record["distributions"] if k in {h for h in record["chosen"]["hyper"]}]
    cols = min(4, 2 + len(hyper))
    rows = -(-(2 + len(hyper)) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[2 + len(hyper):]:
        ax.axis("off")
    steps = [h["step"] for h in history]
    rewards = np.array([h["reward"] for h in history])
    if len(rewards):
        window = max(1, len(rewards) // 20)
        smooth = np.convolve(rewards, np.ones(window) / window, mode="valid")
        axes[0].plot(steps, rewards, ".", ms=2, alpha=0.3, label="reward")
        axes[0].plot(steps[window - 1:], smooth, label=f"mean of {window}")
        axes[1].plot(steps, [h["entropy"] for h in history])
    axes[0].set(title="reward (held-out top-1)", xlabel="step")
    axes[0].legend(fontsize=7)
    axes[1].set(title="entropy / uniform", xlabel="step", ylim=(0, 1.05))
    for ax, key in zip(axes[2:], hyper):
        dist = record["distributions"][key]
        ax.bar(range(len(dist)), list(dist.values()))
        ax.set_xticks(range(len(dist)), [_short(k) for k in dist], rotation=45, fontsize=7)
        ax.set(title=f"{key} = {_short(record['chosen']['hyper'][key])}", ylim=(0, 1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _short(value: Any) -> str:
    try:
        return f"{float(value):.3g}"
    except (TypeError, ValueError):
        return str(value)


def load_autohas_result(run_dir: str | Path) -> dict[str, Any]:
    """The ``autohas.json`` of a finished search."""
    path = Path(run_dir) / RESULT_JSON
    if not path.is_file():
        raise EffmlError(f"{path} is missing: {run_dir} is not a finished AutoHAS run (effml autohas CONFIG)")
    return json.loads(path.read_text())
