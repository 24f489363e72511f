"""Ensembles of classifiers: one module that averages its members' predictions.

"When Ensembling Smaller Models is More Efficient than Single Large Models" (Kondratyuk et al.,
arXiv 2005.00570) averages the outputs of independently trained copies and compares them with one
scaled-up model at matched total FLOPs. An ``Ensemble`` is an ordinary module, so ``count_params``
and ``count_macs`` give the members' sums (the serial cost) and ``export_onnx`` exports all members
as one graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from torch import nn

from effml.errors import EffmlError

EnsembleMode = Literal["probs", "logits"]
MODES: tuple[str, ...] = ("probs", "logits")


class Ensemble(nn.Module):
    """Averages the predictions of its ``members`` (an ``nn.ModuleList``) on the same input.

    ``mode="probs"`` averages softmax probabilities and returns ``log(mean probability)``: a log-
    probability tensor, so ``argmax`` gives the ensemble's class, ``softmax``/``exp`` gives the
    averaged probabilities, and cross-entropy on it is the ensemble's log loss.
    ``mode="logits"`` returns the mean of the members' logits.
    """

    def __init__(self, members: Iterable[nn.Module], mode: EnsembleMode = "probs") -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        if len(self.members) == 0:
            raise EffmlError("an ensemble needs at least one member")
        if mode not in MODES:
            raise EffmlError(f"ensemble mode must be one of {MODES}, got {mode!r}")
        classes = {int(n) for m in self.members if (n := getattr(m, "num_classes", None)) is not None}
        if len(classes) > 1:
            raise EffmlError(f"ensemble members predict different numbers of classes: {sorted(classes)}")
        self.mode: EnsembleMode = mode

    def __len__(self) -> int:
        return len(self.members)

    @property
    def num_classes(self) -> int | None:
        """The members' number of classes, when they report it."""
        return getattr(self.members[0], "num_classes", None)

    def forward_members(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits on ``x``, stacked: ``[members, batch, classes]``."""
        return torch.stack([m(x) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The averaged prediction: log mean probability (``probs``) or mean logits (``logits``)."""
        outs = self.forward_members(x)
        if self.mode == "logits":
            return outs.mean(0)
        # log(mean_k softmax_k) = logsumexp_k(log_softmax_k) - log(k), without underflow
        return torch.logsumexp(torch.log_softmax(outs, dim=-1), dim=0) - math.log(len(self.members))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
