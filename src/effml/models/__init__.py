"""The classification zoo: registry, the one builder, networks and weights."""

from effml.models.ensemble import Ensemble, ensemble_from_specs
from effml.models.factory import create_model, resolve_spec
from effml.models.network import EfficientNet, EfficientNetFeatures
from effml.models.registry import ModelEntry, Preprocess, get_entry, list_models

__all__ = [
    "EfficientNet", "EfficientNetFeatures", "ModelEntry", "Preprocess", "create_model",
    "get_entry", "list_models", "resolve_spec",
    "Ensemble", "ensemble_from_specs",
]
