"""Spec kinds: every top-level spec type with its JSON tag, its task and its builder.

``create_model`` is ``build(resolve(spec))`` through this table; every ``model.json`` and spec file
carries its kind (``{"kind": "efficientnet", ...}``), and the codec (``effml.spec.codec``) writes
and reads the rest. Adding a family of networks adds one row here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from effml.detection.efficientdet import EfficientDet, EfficientDetSpec
from effml.detection.retinanet import RetinaNet, RetinaNetSpec
from effml.detection.ssdlite import SSDLite, SSDLiteSpec
from effml.errors import SpecError
from effml.models.network import EfficientNet, EfficientNetFeatures
from effml.models.spinenet_classifier import SpineNetClassifier, SpineNetClassifierSpec
from effml.spec import NetworkSpec
from effml.spec.codec import from_dict, to_dict

TASKS = ("classify", "detect")


@dataclass(frozen=True)
class SpecKind:
    """One kind of top-level spec: its JSON tag, type, task and builder.

    ``build_features`` (backbones only) builds the network as a feature extractor whose forward
    returns the maps at ``out_indices``.
    """

    tag: str
    spec_type: type
    task: str
    build: Callable[[Any], nn.Module]
    build_features: Callable[[Any, Sequence[int]], nn.Module] | None = None


KINDS: tuple[SpecKind, ...] = (
    SpecKind("efficientnet", NetworkSpec, "classify", EfficientNet, EfficientNetFeatures),
    SpecKind("spinenet_classifier", SpineNetClassifierSpec, "classify", SpineNetClassifier),
    SpecKind("efficientdet", EfficientDetSpec, "detect", EfficientDet),
    SpecKind("retinanet", RetinaNetSpec, "detect", RetinaNet),
    SpecKind("ssdlite", SSDLiteSpec, "detect", SSDLite),
)
_BY_TAG = {k.tag: k for k in KINDS}
_BY_TYPE = {k.spec_type: k for k in KINDS}


def spec_kind(spec_or_tag: Any) -> SpecKind:
    """The kind of a spec object (or of a JSON tag)."""
    if isinstance(spec_or_tag, str):
        if spec_or_tag not in _BY_TAG:
            raise SpecError(f"unknown spec kind {spec_or_tag!r}; known kinds are {sorted(_BY_TAG)}")
        return _BY_TAG[spec_or_tag]
    kind = _BY_TYPE.get(type(spec_or_tag))
    if kind is None:
        raise SpecError(f"{type(spec_or_tag).__name__} is not a spec effml can build; "
                        f"specs are {sorted(t.__name__ for t in _BY_TYPE)}")
    return kind


def spec_to_dict(spec: Any) -> dict[str, Any]:
    """A JSON-ready dict of any top-level spec, tagged with its kind."""
    return {"kind": spec_kind(spec).tag, **to_dict(spec)}


def spec_from_dict(data: Any, source: str = "spec") -> Any:
    """Rebuild a spec from ``spec_to_dict`` output; errors name ``source`` and the key's path."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
    body = dict(data)
    tag = body.pop("kind", None)
    if tag is None:
        raise SpecError(f"{source}: no 'kind' key; a spec file starts with its kind, one of "
                        f"{sorted(_BY_TAG)} (a NetworkSpec is {{\"kind\": \"efficientnet\", ...}})")
    try:
        return from_dict(spec_kind(tag).spec_type, body, path="")
    except SpecError as err:
        raise SpecError(f"{source}: {err}") from None


def spec_to_json(spec: Any) -> str:
    """The spec as an indented JSON document (``spec_from_json`` inverts it)."""
    return json.dumps(spec_to_dict(spec), indent=2)


def spec_from_json(text: str, source: str = "spec JSON") -> Any:
    """Rebuild a spec from ``spec_to_json`` output."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"{source}: not valid JSON ({err})") from None
    return spec_from_dict(data, source)


def load_spec(path: str | Path) -> Any:
    """The spec saved in a JSON file (a ``model.json`` or a spec written by ``spec_to_json``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"spec file {str(path)!r} cannot be read ({err})") from None
    return spec_from_json(text, source=str(path))


def task_of(spec: Any) -> str:
    """The task a spec is trained for: "classify" or "detect"."""
    return spec_kind(spec).task
