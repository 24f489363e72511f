"""The zoo: the catalogue of named models, the spec kinds (JSON tag, task, builder) and
``create_model``. It imports the families (models/, detection/); they never import it."""

from effml.zoo.factory import create_model, ensemble_from_specs, resolve_spec
from effml.zoo.kinds import (
    KINDS, SpecKind, load_spec, spec_from_dict, spec_from_json, spec_kind, spec_to_dict, spec_to_json, task_of,
)
from effml.zoo.profile import ModelProfile, profile_model
from effml.zoo.registry import get_entry, list_models

__all__ = [
    "KINDS", "ModelProfile", "SpecKind", "create_model", "ensemble_from_specs", "get_entry", "list_models",
    "load_spec", "profile_model", "resolve_spec", "spec_from_dict", "spec_from_json", "spec_kind",
    "spec_to_dict", "spec_to_json", "task_of",
]
