"""BigNAS end to end (Yu et al., arXiv 2003.11142): the supernet run's config, training it through
the ordinary training engine, loading it back, calibrating and scoring a child, and exporting a
child as an ordinary run directory (a plain spec and sliced weights: no supernet code loads it).

Three lines of Python do what ``effml supernet`` does::

    result = train_supernet(load_supernet_config("configs/bignas_digits.yaml"))
    trained = load_supernet(result.run_dir)
    export_child(trained, select_child(trained, 2e6).spec, "runs/child_2m")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass
from torch import nn

from effml.detection.detector import Detector
from effml.errors import EffmlError
from effml.files import (
    atomic_dir,
    atomic_write_text,
    make_output_dir,
    remove_empty_dirs,
)
from effml.measure.latency_table import LatencyTable, predict
from effml.models.network import EfficientNet
from effml.models.weights import load_weights, save_weights
from effml.search.oneshot.sandwich import SandwichStep
from effml.search.oneshot.selection import Selection, coarse_to_fine
from effml.search.oneshot.supernet import (
    Supernet,
    check_elastic,
    resize_to,
    zero_init_last_bn,
)
from effml.search.spaces.catalog import space_for
from effml.search.study.cost import spec_cost
from effml.spec import NetworkSpec
from effml.train.bn_calibration import recalibrate_bn
from effml.train.config import (
    CONFIG_SCHEMA,
    Config,
    InputPath,
    config_from_dict,
    config_kind,
    config_to_yaml,
    load_config,
    training_config,
)
from effml.train.data import (
    build_datasets,
    eval_preprocess,
    num_classes,
    run_eval_loader,
)
from effml.train.engine import RunResult, fit
from effml.train.run_dir import (
    CONFIG_YAML,
    WEIGHTS_RAW,
    preprocess_fields,
    read_run_info,
    weights_file,
    write_run_info,
)
from effml.train.trainer import Trainer, preserved_global_state, seed_everything
from effml.zoo import spec_to_json


@dataclass(config=CONFIG_SCHEMA)
class SupernetSection:
    """The supernet and its training rule (BigNAS section 3.1); the rest is an ordinary training config."""

    space: Annotated[str, Field(min_length=1), InputPath((".json", ".yaml", ".yml"))] = "bignas"
    """a named space (effml search show bignas) or a space file; its largest member's resolution is data.image_size"""
    random_children: Annotated[int, Field(ge=0)] = 2
    """N random children per step besides the largest and the smallest (BigNAS: 2)"""
    sandwich: bool = True
    """largest + smallest + N random per step; false: N + 2 random (ablation)"""
    inplace_distillation: bool = True
    """children learn from the largest child's soft predictions; false: from the labels"""
    zero_init_last_bn: bool = True
    """residual blocks start as the identity (last BN gamma 0)"""
    calibration_batches: Annotated[int, Field(ge=1)] = 16
    """training batches that re-estimate a child's BN statistics (selection, export)"""


@dataclass(config=CONFIG_SCHEMA)
class SupernetConfig(Config):
    """A training config plus the ``supernet`` section."""

    supernet: SupernetSection = field(default_factory=SupernetSection)


def load_supernet_config(path: str | Path | None, overrides: list[str] = (), base: Any = None, *,
                         saved: bool | None = None) -> SupernetConfig:
    """Read a supernet YAML (a training config with a ``supernet`` section) and apply overrides."""
    return load_config(path, overrides, base, saved=saved, schema=SupernetConfig)


def build_supernet(cfg: SupernetConfig, num_classes: int) -> Supernet:
    """The supernet of ``cfg.supernet.space`` at ``data.image_size``, with ``cfg.model``'s dropout, drop
    path and BN settings on its largest child (freshly initialised, not zero-initialised)."""
    space = space_for(cfg.supernet.space, num_classes, cfg.data.image_size)
    check_elastic(space)
    m = cfg.model
    return Supernet(space, dropout=m.dropout, drop_path=m.drop_path, bn_momentum=m.bn_momentum, bn_eps=m.bn_eps)


def sandwich_step(cfg: SupernetConfig) -> SandwichStep:
    """The training step ``cfg.supernet`` describes."""
    s = cfg.supernet
    return SandwichStep(num_random=s.random_children, sandwich=s.sandwich, inplace_distillation=s.inplace_distillation,
                        label_smoothing=cfg.train.label_smoothing, seed=cfg.train.seed)


def train_supernet(cfg: SupernetConfig, *, resume: bool = False, quiet: bool = False) -> RunResult:
    """Train a supernet with the sandwich rule as ``cfg`` says (a run directory like ``effml train``'s,
    whose weights are the supernet's); ``resume`` continues it exactly."""
    if cfg.data.holdout == 0:
        raise EffmlError("data.holdout is 0: selecting children scores them on a held-out part of the "
                         "training images, which must be left out of supernet training; set data.holdout=0.1")
    with preserved_global_state():
        seed_everything(cfg.train.seed)  # the supernet's initial weights follow train.seed
        supernet = build_supernet(cfg, num_classes(cfg))
        if cfg.supernet.zero_init_last_bn:
            zero_init_last_bn(supernet)
    return fit(cfg, model=supernet, step=sandwich_step(cfg), resume=resume, quiet=quiet)


@dataclasses.dataclass
class TrainedSupernet:
    """A trained supernet with its config and a Trainer over its data (calibration batches, splits)."""

    supernet: Supernet
    cfg: SupernetConfig
    run_dir: Path
    trainer: Trainer
    info: dict[str, Any]
    calibration: int
    """training batches BN calibration draws (a BigNAS run's ``supernet.calibration_batches``, a TuNAS
    run's ``CALIBRATION_BATCHES``)"""

    def calibrated(self, spec: NetworkSpec, batches: list[torch.Tensor] | None = None) -> EfficientNet:
        """The child ``spec`` as an ordinary network in eval mode, its BatchNorm statistics re-estimated
        on ``calibration`` training batches at its resolution (BigNAS section 3.2)."""
        if batches is None:
            batches = self.calibration_batches()
        child = self.supernet.extract(spec)
        recalibrate_bn(child, [resize_to(b, spec.resolution) for b in batches])
        return child.eval()

    def calibration_batches(self) -> list[torch.Tensor]:
        """The training batches BN calibration uses (fixed by the run's seed)."""
        return self.trainer.calibration_batches(self.calibration)

    def evaluate(self, child: nn.Module, resolution: int, split: str = "holdout") -> dict[str, float]:
        """Top-1 / top-5 / loss of ``child`` on ``split`` ('holdout' or 'val'), inputs resized to ``resolution``."""
        t = self.trainer
        # a detector (a detection supernet's child) is scored at its one resolution, the data's
        model = child if isinstance(child, Detector) else AtResolution(child, resolution)
        return t.task.evaluate(self.cfg, model, t.eval_batches(split), t.device, t.dataset(split))


class AtResolution(nn.Module):
    """``model`` fed its input resized to ``resolution``."""

    def __init__(self, model: nn.Module, resolution: int) -> None:
        super().__init__()
        self.model, self.resolution = model, resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(resize_to(x, self.resolution))


def load_supernet(run_dir: str | Path, weights: str = "best") -> TrainedSupernet:
    """A supernet run written by ``train_supernet`` (``weights``: 'best' as run.json says, 'ema', 'raw')."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    path = run_dir / CONFIG_YAML
    if not path.is_file():
        raise EffmlError(f"{path} is missing: {run_dir} is not a finished supernet run")
    if config_kind(path, [SupernetConfig]) is not SupernetConfig:
        from effml.search.oneshot.tunas import FOUND_SPEC, is_tunas_run

        if is_tunas_run(run_dir):
            raise EffmlError(f"{run_dir} is a TuNAS search, not a BigNAS supernet run: selection takes BigNAS "
                             f"runs; `effml supernet export {run_dir} --child {run_dir / FOUND_SPEC} -o DIR` "
                             f"exports the child it found")
        raise EffmlError(f"{run_dir} is an ordinary training run (its {CONFIG_YAML} has no supernet section); "
                         f"give a run written by `effml supernet train`")
    cfg = load_supernet_config(path, saved=True)
    path = weights_file(run_dir, info, weights)
    supernet = build_supernet(cfg, len(info["classes"]))
    load_weights(supernet, path)
    trainer = Trainer(cfg, model=supernet)
    supernet.eval()
    return TrainedSupernet(supernet, cfg, run_dir, trainer, info, cfg.supernet.calibration_batches)


def export_child(trained: TrainedSupernet, spec: NetworkSpec, out_dir: str | Path,
                 batches: list[torch.Tensor] | None = None) -> Path:
    """Write child ``spec`` as an ordinary run directory: ``model.json`` (its spec), ``weights.safetensors``
    (the supernet's slices, BN calibrated), ``config.yaml`` (a plain training config for fine-tuning)
    and ``run.json`` (its val and held-out metrics: top-1, or COCO AP for a detection supernet's
    child). ``out_dir`` must not exist; it appears whole or not at all."""
    out = Path(out_dir)
    if out.exists():
        raise EffmlError(f"{out} already exists; give a new output directory (-o)")
    created = make_output_dir(out.parent, "output")  # a folder it cannot write fails before the work
    try:
        spec = trained.supernet.child_spec(spec)
        child = trained.calibrated(spec, batches)
        cfg, t = trained.cfg, trained.trainer
        plain = config_from_dict({"model": {"name": str(out.absolute() / "model.json"), "weights": None},
                                  "data": {"image_size": spec.resolution}, "run": {"dir": str(out)}},
                                 training_config(cfg))
        # scored as `effml eval` scores the exported run: its images read at its resolution, not the
        # supernet's batches resized (the two differ by a point or more on small images)
        preprocess = eval_preprocess(plain, t.preprocess)
        bundle = build_datasets(plain, preprocess)
        val, holdout = (t.task.evaluate(plain, child, run_eval_loader(plain, data), torch.device("cpu"), data)
                        for data in (bundle.val, bundle.holdout))
        info = {
            "task": t.task.name, "model": str(out.absolute() / "model.json"), "classes": list(t.bundle.classes),
            **preprocess_fields(preprocess), **t.task.run_info(bundle.val),
            "val": val, "ema_val": None, "holdout": holdout, "weights": WEIGHTS_RAW,
            "global_step": trained.info.get("global_step"), "supernet": str(trained.run_dir.absolute()),
            "macs": spec_cost(spec)["macs"], "params": sum(p.numel() for p in child.parameters()),
        }
        with atomic_dir(out) as tmp:
            save_weights(child.state_dict(), tmp / WEIGHTS_RAW)
            atomic_write_text(tmp / "model.json", spec_to_json(spec))
            atomic_write_text(tmp / CONFIG_YAML, config_to_yaml(plain))
            write_run_info(tmp, **info)
    except BaseException:
        remove_empty_dirs(created)  # the folders it made for -o, when nothing was written
        raise
    return out


def select_child(trained: TrainedSupernet, target: float, *, table: LatencyTable | None = None,
                 coarse_top: int = 4, mutations: int = 12, seed: int = 0,
                 echo: Callable[[str], None] | None = None) -> Selection:
    """Coarse-to-fine selection (``effml.search.oneshot.selection``) of the best child within ``target`` MACs (or,
    with a latency ``table``, ``target`` ms of predicted latency), each candidate scored by its held-out
    top-1 with the shared weights after BN calibration."""
    batches = trained.calibration_batches()

    def score(spec: NetworkSpec) -> float:
        spec = trained.supernet.child_spec(spec)
        return trained.evaluate(trained.calibrated(spec, batches), spec.resolution)["top1"]

    costing = {} if table is None else {"cost": lambda spec: predict(table, spec), "unit": "ms"}
    return coarse_to_fine(trained.supernet.space, score, target, coarse_top=coarse_top, mutations=mutations,
                          seed=seed, echo=echo, **costing)
