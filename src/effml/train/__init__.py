"""Training: the Trainer (step, evaluate, state), ``fit`` (the loop over it), recipes as objectives
(label smoothing, AdvProp, distillation) and pluggable steps (``effml.train.step``)."""

from effml.train.engine import RunResult, fit
from effml.train.trainer import Trainer

__all__ = ["RunResult", "Trainer", "fit"]
