"""effml: efficient vision models from the AutoML line of papers, as specs built by one builder."""

from effml.errors import EffmlError, InputError, SpecError, UnknownModelError, WeightsError
from effml.models.weights import load_weights, save_weights
from effml.spec import NetworkSpec, compound_scale
from effml.zoo import (
    create_model, get_entry, list_models, load_spec, resolve_spec, spec_from_json, spec_to_json,
)

__version__ = "0.1.0"

__all__ = [
    "EffmlError", "InputError", "NetworkSpec", "SpecError", "UnknownModelError", "WeightsError",
    "compound_scale", "create_model", "get_entry", "list_models", "load_spec", "load_weights",
    "resolve_spec", "save_weights", "spec_from_json", "spec_to_json",
]
