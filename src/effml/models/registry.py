"""The model registry: names (timm's) -> a spec function and the preprocessing its weights expect."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from effml.errors import UnknownModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite TF checkpoints take (x - 127) / 128 on 0..255 pixels (lite/README.md).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
# AdvProp checkpoints take [-1, 1] inputs (eval_ckpt_main.py: x * 2 / 255 - 1).
ADVPROP_MEAN = (0.5,) * 3
ADVPROP_STD = (0.5,) * 3


@dataclass(frozen=True)
class Preprocess:
    """How images must be prepared for a model's weights (eval transform)."""

    input_size: int
    crop_pct: float
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"


def tf_crop_pct(size: int) -> float:
    """Crop fraction of the TF eval pipeline, size / (size + CROP_PADDING=32) (reference 1.7)."""
    return size / (size + 32)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, family, spec function, preprocessing and task.

    ``task`` is "classify" (the spec is a ``NetworkSpec``) or "detect" (a detector spec).
    """

    name: str
    family: str
    spec_fn: Callable[[], Any]
    preprocess: Preprocess
    task: str = "classify"

    def spec(self) -> Any:
        """The spec of this model (``NetworkSpec`` or a detector spec)."""
        return self.spec_fn()


# Weight tags (timm's 'arch.tag' names) that change preprocessing, not architecture.
_TAG_PREPROCESS = {"ap": (ADVPROP_MEAN, ADVPROP_STD)}

_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add a model to the registry (names are unique)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered model names matching a glob pattern (and ``task``: "classify" / "detect"), sorted."""
    _ensure_zoo()
    return sorted(n for n, e in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (task is None or e.task == task))


def get_entry(name: str) -> ModelEntry:
    """The entry for ``name``; a weight tag (``tf_efficientnet_b0.ap_in1k``) adjusts preprocessing."""
    _ensure_zoo()
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


def _ensure_zoo() -> None:
    # The zoo modules register themselves on import; importing here avoids an import cycle.
    from effml.models import efficientnet, mixnet  # noqa: F401
    from effml.detection import efficientdet, retinanet, ssdlite  # noqa: F401
    from effml.models import spinenet_classifier  # noqa: F401
