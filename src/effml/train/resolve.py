"""One way to turn a model argument into a model: a zoo name, a spec JSON file, a run directory, a
spec or a module built from a spec is resolved to its spec, preprocessing and weights.

The commands that take a MODEL (predict, detect, export, bench), the Trainer, a distillation teacher
and the benchmark call ``resolve_model``; ``ResolvedModel.build`` gives the network. It lives in
``train`` because a run directory (written by ``effml train``, read by ``effml.train.run_dir``) is
one of the things a model argument can name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from torch import nn

from effml.errors import EffmlError, SpecError
from effml.models.weights import load_weights
from effml.spec.entry import Preprocess
from effml.train.run_dir import is_run_dir, load_run
from effml.zoo import create_model, get_entry, load_spec, spec_kind, task_of

# zoo: a registered name; file: a spec JSON file; run: a run directory; spec: a spec object;
# module: a network built from a spec
Source = Literal["zoo", "file", "run", "spec", "module"]

MODEL_KINDS = ("a zoo name (`effml models` lists them), a spec JSON file, a run directory written by "
               "`effml train`, a spec, or a module built from a spec (effml.create_model)")


@dataclass(frozen=True)
class ResolvedModel:
    """What a model argument names: its spec, preprocessing and weights, and where they came from."""

    spec: Any  # a NetworkSpec or a composite spec (a detector, the SpineNet classifier)
    preprocess: Preprocess  # the eval preprocessing its weights expect
    # the checkpoint its weights come from (the one given, else a run's); None: initial weights
    # (or, for a module given, the ones it holds)
    weights: str | os.PathLike[str] | None
    source: Source
    name: str  # the name or path given, or the type of the object given: for messages
    # the network, already built and holding ``weights``: a module given, or a run's model
    net: nn.Module | None = None
    classes: tuple[str, ...] = ()  # a run's class names
    category_ids: tuple[int, ...] = ()  # a detection run's annotation-file id of each class
    run_dir: Path | None = None
    drop_classifier: bool = False  # ``weights`` are loaded without their classifier

    @property
    def task(self) -> str:
        """The task of its spec: "classify" or "detect"."""
        return task_of(self.spec)

    def build(self, spec: Any = None) -> nn.Module:
        """The network holding its weights: ``net`` as it is when already built, else ``spec``
        (default: this model's; e.g. with overrides from ``effml.zoo.resolve_spec``) built and
        ``weights`` loaded."""
        if self.net is not None:
            return self.net  # a built network keeps its own settings
        net = create_model(self.spec if spec is None else spec)
        if self.weights is not None:
            load_weights(net, self.weights, drop_classifier=self.drop_classifier)
        return net


def default_preprocess(spec: Any) -> Preprocess:
    """The preprocessing of a spec that declares none: ImageNet mean/std at its resolution,
    bilinear; a classifier's centre crop keeps 0.875 of the image, a detector's all of it."""
    return Preprocess(spec.resolution, 1.0 if task_of(spec) == "detect" else 0.875, interpolation="bilinear")


def resolve_model(model: Any, *, weights: str | os.PathLike[str] | None = None,
                  drop_classifier: bool = False) -> ResolvedModel:
    """The spec, preprocessing and weights ``model`` names: a zoo name, a spec JSON file, a run
    directory, a spec, or a module built from a spec; ``weights`` (a checkpoint) replaces its own.

    Only a run directory is built here (its weights are checked as it is read); a module given, or
    a run's model, gets ``weights`` loaded at once; the rest is built by ``ResolvedModel.build``.
    """
    if isinstance(model, nn.Module):
        spec = getattr(model, "spec", None)
        if spec is None:
            raise EffmlError(f"a {type(model).__name__} without a .spec is not a model effml can resolve; "
                             f"give {MODEL_KINDS}")
        resolved = ResolvedModel(spec, default_preprocess(spec), None, "module", type(model).__name__,
                                 net=model, drop_classifier=drop_classifier)
        return _with_weights(resolved, model, weights)
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        if is_run_dir(name):
            trained = load_run(name)
            resolved = ResolvedModel(trained.spec, trained.preprocess, trained.weights_path, "run", name,
                                     trained.model, trained.classes, trained.category_ids, Path(name),
                                     drop_classifier=drop_classifier)
            return _with_weights(resolved, trained.model, weights)
        if name.endswith(".json"):
            spec = load_spec(name)
            return ResolvedModel(spec, default_preprocess(spec), weights, "file", name,
                                 drop_classifier=drop_classifier)
        _refuse_other_paths(name)
        entry = get_entry(name)
        return ResolvedModel(entry.spec(), entry.preprocess, weights, "zoo", name, drop_classifier=drop_classifier)
    try:
        spec_kind(model)
    except SpecError:
        raise SpecError(f"{type(model).__name__} {_short(model)} is not a model effml can resolve; "
                        f"give {MODEL_KINDS}") from None
    return ResolvedModel(model, default_preprocess(model), weights, "spec", type(model).__name__,
                         drop_classifier=drop_classifier)


def _refuse_other_paths(name: str) -> None:
    """A folder that is not a finished run, or a file that is no spec JSON, named as a model: say
    which it is (instead of "unknown model")."""
    path = Path(name)
    if path.is_dir():
        unfinished = (path / "checkpoints").is_dir()
        raise EffmlError(f"{name} is a folder but not a finished `effml train` run (no run.json there"
                         + ("; it holds checkpoints: finish it with `effml train --resume "
                            f"{name}`)" if unfinished else ")")
                         + f"; give {MODEL_KINDS}")
    if path.is_file():
        raise EffmlError(f"{name} is a file but not a spec JSON (.json); a model is a zoo name, a spec JSON "
                         f"file or a run directory, and a checkpoint goes with it as --weights")


def _with_weights(resolved: ResolvedModel, net: nn.Module, weights: str | os.PathLike[str] | None) -> ResolvedModel:
    """``resolved`` with ``weights`` (a checkpoint given, if any) loaded into its built ``net``."""
    if weights is None:
        return resolved
    load_weights(net, weights, drop_classifier=resolved.drop_classifier)
    return replace(resolved, weights=weights)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
