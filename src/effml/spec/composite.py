"""Field overrides for every spec, and the one rule for composite specs (a backbone plus more).

A composite spec (EfficientDet, RetinaNet, SSDLite, the SpineNet classifier) declares in
``BACKBONE_FIELDS`` which settings route to its backbone; ``replace`` applies each change to the
spec itself, to its backbone, or to both (a field both have, such as ``bn_eps``, so that the
whole network trains with one setting). Every spec names its input size ``resolution``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from effml.errors import SpecError


def replace_fields(spec: Any, changes: dict[str, Any]) -> Any:
    """A copy of a frozen spec with ``changes``; an unknown field is a ``SpecError`` naming it."""
    names = {f.name for f in dataclasses.fields(spec) if f.init}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise SpecError(f"{type(spec).__name__} has no field {unknown[0]!r}; its fields are {sorted(names)}")
    return dataclasses.replace(spec, **changes)


class ComposedSpec:
    """Mixin for frozen dataclass specs with a ``backbone`` spec and an input ``resolution``."""

    backbone: Any
    resolution: int
    # Settings that belong to the backbone (applied there, and here too where this spec has them).
    BACKBONE_FIELDS: ClassVar[frozenset[str]] = frozenset({"bn_eps", "bn_momentum", "drop_path", "in_channels"})

    @property
    def in_channels(self) -> int:
        """Input image channels."""
        return self.backbone.in_channels

    def replace(self, **changes: Any) -> Any:
        """A copy with fields changed; ``BACKBONE_FIELDS`` go to the backbone (and here, if present)."""
        own = {f.name for f in dataclasses.fields(self) if f.init}  # type: ignore[arg-type]
        routed = {k: changes[k] for k in changes if k in self.BACKBONE_FIELDS}
        unknown = sorted(k for k in changes if k not in own and k not in routed)
        if unknown:
            raise SpecError(
                f"{type(self).__name__} has no setting {unknown[0]!r}; it has {sorted(own)} and passes "
                f"{sorted(self.BACKBONE_FIELDS)} to its backbone")
        mine = {k: v for k, v in changes.items() if k in own and k != "backbone"}
        backbone = changes.get("backbone", self.backbone)
        if routed:
            backbone = backbone.replace(**routed)
        return replace_fields(self, {**mine, "backbone": backbone} if "backbone" in own else mine)
