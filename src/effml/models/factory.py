"""``create_model``: a name or a spec in, a built (optionally weight-loaded) network out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import nn

from effml.errors import SpecError
from effml.models.network import EfficientNet, EfficientNetFeatures
from effml.models.registry import get_entry
from effml.spec import NetworkSpec


def resolve_spec(model: str | NetworkSpec | Any, **overrides) -> Any:
    """The spec of a registered name (or the spec itself) with field overrides applied.

    For a detector, ``resolution`` sets its input size and ``dropout``/``drop_path``/``in_channels``
    apply to its backbone.
    """
    spec = get_entry(model).spec() if isinstance(model, str) else model
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return spec
    if isinstance(spec, NetworkSpec):
        return spec.replace(**changes)
    if "resolution" in changes:
        changes["image_size"] = changes.pop("resolution")
    # A composite spec (detector, SpineNet classifier) takes the fields it has; the rest go to its
    # backbone. BN settings apply to both, so the whole network trains with one momentum.
    own = {f.name for f in fields(spec)}
    backbone = {k: v for k, v in changes.items() if k not in own or k in ("bn_eps", "bn_momentum")}
    changes = {k: v for k, v in changes.items() if k in own}
    if backbone:
        inner = getattr(spec, "backbone", None)
        known = {f.name for f in fields(inner)} if inner is not None else set()
        unknown = sorted(k for k in backbone if k not in known and k not in own)
        if unknown:
            raise SpecError(f"{type(spec).__name__} has no setting {unknown[0]!r} (nor has its backbone)")
        backbone = {k: v for k, v in backbone.items() if k in known}
        if backbone:
            changes["backbone"] = inner.replace(**backbone)
    return spec.replace(**changes)


def create_model(
    model: str | NetworkSpec,
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
) -> nn.Module:
    """Build a zoo model by its timm/effdet name (``efficientnet_b0``, ``tf_efficientdet_d0``, ...) or a spec.

    ``weights`` loads a checkpoint (timm, efficientnet-pytorch or effml safetensors);
    ``drop_classifier=True`` keeps this model's fresh classifier when the checkpoint has another
    number of classes. ``features_only`` returns a backbone whose forward gives the maps at
    ``out_indices`` (1..4 = strides 4, 8, 16, 32). A detector's ``num_classes`` sizes its class
    head and ``resolution`` its input size.
    """
    spec = resolve_spec(model, num_classes=num_classes, dropout=dropout, drop_path=drop_path,
                        resolution=resolution, in_channels=in_channels)
    if not isinstance(spec, NetworkSpec):
        net = _build_detector(spec, features_only)
    else:
        net = EfficientNetFeatures(spec, out_indices) if features_only else EfficientNet(spec)
    if weights is not None:
        from effml.models.weights import load_weights

        load_weights(net, weights, drop_classifier=drop_classifier)
    return net


def _build_detector(spec: Any, features_only: bool) -> nn.Module:
    # Detection builds on the models layer; imported here so classification never loads it.
    from effml.detection.spec import detector_kind

    if features_only:
        raise SpecError("features_only applies to classification backbones, not to detectors")
    return detector_kind(spec).build(spec)
