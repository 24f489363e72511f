"""``create_model``: a name or a spec in, a built (optionally weight-loaded) network out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from effml.models.network import EfficientNet, EfficientNetFeatures
from effml.models.registry import get_entry
from effml.spec import NetworkSpec


def resolve_spec(model: str | NetworkSpec, **overrides) -> NetworkSpec:
    """The spec of a registered name (or the spec itself) with field overrides applied."""
    spec = model if isinstance(model, NetworkSpec) else get_entry(model).spec()
    changes = {k: v for k, v in overrides.items() if v is not None}
    return spec.replace(**changes) if changes else spec


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
    """Build a zoo model by its timm name (``efficientnet_b0``, ``tf_mixnet_s``, ...) or a spec.

    ``weights`` loads a checkpoint (timm, efficientnet-pytorch or effml safetensors);
    ``drop_classifier=True`` keeps this model's fresh classifier when the checkpoint has another
    number of classes. ``features_only`` returns a backbone whose forward gives the maps at
    ``out_indices`` (1..4 = strides 4, 8, 16, 32).
    """
    spec = resolve_spec(model, num_classes=num_classes, dropout=dropout, drop_path=drop_path,
                        resolution=resolution, in_channels=in_channels)
    net = EfficientNetFeatures(spec, out_indices) if features_only else EfficientNet(spec)
    if weights is not None:
        from effml.models.weights import load_weights

        load_weights(net, weights, drop_classifier=drop_classifier)
    return net
