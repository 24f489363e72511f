"""Training: the Trainer (step, evaluate, state), ``fit`` (the loop over it), recipes as objectives
(label smoothing, AdvProp, distillation) and pluggable steps (``effml.train.step``); ``resolve_model``
turns any model argument (zoo name, spec JSON, run directory, spec, module) into a model."""

from effml.train.engine import RunResult, fit
from effml.train.resolve import ResolvedModel, resolve_model
from effml.train.trainer import Trainer

__all__ = ["ResolvedModel", "RunResult", "Trainer", "fit", "resolve_model"]
