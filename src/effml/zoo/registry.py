"""The catalogue of zoo names (timm's and effdet's): each family declares its ``ENTRIES`` as data,
and this module collects them. Nothing registers itself on import."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import replace

from effml.detection import efficientdet, retinanet, ssdlite
from effml.errors import UnknownModelError
from effml.models import efficientnet, mixnet, spinenet_classifier
from effml.spec.entry import ADVPROP_MEAN, ADVPROP_STD, ModelEntry

# Every family of the zoo, in the order `effml models` lists them.
FAMILIES = (efficientnet, mixnet, spinenet_classifier, efficientdet, retinanet, ssdlite)

# Weight tags (timm's 'arch.tag' names) that change preprocessing, not architecture.
_TAG_PREPROCESS = {"ap": (ADVPROP_MEAN, ADVPROP_STD)}


def _collect() -> dict[str, ModelEntry]:
    registry: dict[str, ModelEntry] = {}
    for family in FAMILIES:
        for entry in family.ENTRIES:
            if entry.name in registry:
                raise ValueError(f"model {entry.name!r} is declared twice ({family.__name__})")
            registry[entry.name] = entry
    return registry


_REGISTRY: dict[str, ModelEntry] = _collect()


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Zoo model names matching a glob pattern (and ``task``: "classify" / "detect"), sorted."""
    return sorted(n for n, e in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (task is None or e.task == task))


def get_entry(name: str) -> ModelEntry:
    """The entry for ``name``; a weight tag (``tf_efficientnet_b0.ap_in1k``) adjusts preprocessing."""
    arch, _, tag = name.partition(".")
    if arch not in _REGISTRY:
        close = _close_names(arch)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Run `effml models` to list all {len(_REGISTRY)} models."
        )
    entry = _REGISTRY[arch]
    kind = tag.split("_")[0] if tag else ""
    if kind in _TAG_PREPROCESS:
        mean, std = _TAG_PREPROCESS[kind]
        entry = replace(entry, name=name, preprocess=replace(entry.preprocess, mean=mean, std=std))
    return entry


def _close_names(name: str, n: int = 5) -> list[str]:
    scored = [(difflib.SequenceMatcher(None, name, k).ratio(), k) for k in _REGISTRY]
    return [k for r, k in sorted(scored, key=lambda t: (-t[0], t[1])) if r >= 0.6][:n]
