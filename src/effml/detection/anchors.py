"""Multi-level RetinaNet/EfficientDet anchors as a spec plus a pure generator.

An ``AnchorSpec`` describes the anchor grid; ``generate_anchors(spec, image_size)`` turns it into
one ``[N, 4]`` xyxy tensor in input-image pixels, levels P<min> first, and inside a level ordered
(row, column, octave scale, aspect ratio) -- the order the heads' ``[A, C]`` channel layout
flattens into (google/automl ``tf2/anchors.py``; effdet ``anchors.py``). The generator is pure; callers cache its result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from effml.errors import SpecError

# An aspect ratio is a float a (automl form: width * sqrt(a), height / sqrt(a)) or an explicit
# (ax, ay) multiplier pair (effdet form, e.g. (1.4, 0.7)).
AspectRatio = float | tuple[float, float]


@dataclass(frozen=True)
class AnchorSpec:
    """Anchor grid of a feature pyramid: levels, octave scales per octave, aspect ratios, base scale.

    Defaults are EfficientDet D0-D6's (google/automl ``hparams_config.py``): P3-P7, 3 scales, ratios
    1, 2, 0.5, anchor_scale 4 -> 9 anchors per location. ``anchor_scale`` may also be a tuple with
    one value per level (automl allows it; see google/automl#524).
    """

    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    aspect_ratios: tuple[AspectRatio, ...] = (1.0, 2.0, 0.5)
    anchor_scale: float | tuple[float, ...] = 4.0

    def __post_init__(self) -> None:
        if not (isinstance(self.min_level, int) and isinstance(self.max_level, int)):
            raise SpecError(f"AnchorSpec: min_level/max_level must be ints, got {self.min_level!r}/{self.max_level!r}")
        if not 1 <= self.min_level <= self.max_level:
            raise SpecError(
                f"AnchorSpec: need 1 <= min_level <= max_level, got min_level={self.min_level}, "
                f"max_level={self.max_level}")
        if not isinstance(self.num_scales, int) or self.num_scales < 1:
            raise SpecError(f"AnchorSpec: num_scales must be a positive int, got {self.num_scales!r}")
        # Normalise lists (e.g. from a JSON/YAML config) to tuples so the spec stays hashable.
        object.__setattr__(self, "aspect_ratios", tuple(_check_ratio(a) for a in self.aspect_ratios))
        if not self.aspect_ratios:
            raise SpecError("AnchorSpec: aspect_ratios is empty; give at least one ratio, e.g. (1.0,)")
        if isinstance(self.anchor_scale, (list, tuple)):
            scales = tuple(float(s) for s in self.anchor_scale)
            if len(scales) != self.num_levels:
                raise SpecError(
                    f"AnchorSpec: anchor_scale has {len(scales)} values but levels "
                    f"{self.min_level}..{self.max_level} need {self.num_levels} (or give one float)")
            object.__setattr__(self, "anchor_scale", scales)
        else:
            scales = (float(self.anchor_scale),)
        if any(not s > 0 for s in scales):
            raise SpecError(f"AnchorSpec: anchor_scale must be > 0, got {self.anchor_scale!r}")

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels (5 for P3-P7)."""
        return self.max_level - self.min_level + 1

    @property
    def num_anchors(self) -> int:
        """Anchors per feature-map location (octave scales x aspect ratios)."""
        return self.num_scales * len(self.aspect_ratios)

    def level_anchor_scale(self, level: int) -> float:
        """The base anchor scale of one level."""
        if isinstance(self.anchor_scale, tuple):
            return self.anchor_scale[level - self.min_level]
        return float(self.anchor_scale)

    def feature_sizes(self, image_size: tuple[int, int]) -> list[tuple[int, int]]:
        """(h, w) of every level min_level..max_level for an input of ``image_size`` (h, w)."""
        return feature_sizes(self, image_size)


def _check_ratio(a: object) -> AspectRatio:
    if isinstance(a, (list, tuple)):
        if len(a) != 2 or not all(float(v) > 0 for v in a):
            raise SpecError(f"AnchorSpec: an aspect-ratio pair must be two positive numbers (ax, ay), got {a!r}")
        return (float(a[0]), float(a[1]))
    if not isinstance(a, (int, float)) or not a > 0:
        raise SpecError(f"AnchorSpec: an aspect ratio must be a positive number or a pair (ax, ay), got {a!r}")
    return float(a)


def _check_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    if len(image_size) != 2 or not all(int(s) == s and s > 0 for s in image_size):
        raise SpecError(f"image_size must be two positive ints (height, width), got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def feature_sizes(spec: AnchorSpec, image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """(h, w) per level min_level..max_level: each level halves the previous one, rounding up."""
    # (s - 1) // 2 + 1 = ceil(s / 2), repeated from the input size: automl utils.get_feat_sizes,
    # the size a stride-2 'SAME' conv/pool chain produces (google/automl efficientdet/utils.py).
    h, w = _check_image_size(image_size)
    sizes = []
    for level in range(1, spec.max_level + 1):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        if level >= spec.min_level:
            sizes.append((h, w))
    return sizes


def anchors_per_level(spec: AnchorSpec, image_size: tuple[int, int]) -> list[int]:
    """Number of anchors on each level, P<min_level> first."""
    return [h * w * spec.num_anchors for h, w in feature_sizes(spec, image_size)]


def _half_sizes(spec: AnchorSpec, level: int, stride_y: float, stride_x: float) -> tuple[list[float], list[float]]:
    """Half width and half height of the level's anchors, octave scale outer, aspect ratio inner."""
    half_w, half_h = [], []
    for octave in range(spec.num_scales):
        base = spec.level_anchor_scale(level) * 2.0 ** (octave / spec.num_scales)
        for aspect in spec.aspect_ratios:
            if isinstance(aspect, tuple):
                ax, ay = aspect
            else:
                # A float is w/h: stretch width by sqrt(a), shrink height by it (tf2/anchors.py).
                ax = math.sqrt(aspect)
                ay = 1.0 / ax
            half_w.append(base * stride_x * ax / 2.0)
            half_h.append(base * stride_y * ay / 2.0)
    return half_w, half_h


def generate_anchors(spec: AnchorSpec, image_size: tuple[int, int]) -> torch.Tensor:
    """All anchors for an input of ``image_size`` (h, w): float32 ``[N, 4]`` xyxy in input pixels."""
    image_h, image_w = _check_image_size(image_size)
    levels = []
    for level, (feat_h, feat_w) in zip(range(spec.min_level, spec.max_level + 1), feature_sizes(spec, image_size)):
        # The stride is image / feature size, not 2**level: they differ when the input is not a
        # multiple of 2**max_level, and the reference uses the ratio (automl tf2/anchors.py).
        # Float64 then float32, as the reference builds anchors in numpy and casts once.
        stride_y, stride_x = image_h / feat_h, image_w / feat_w
        cy = stride_y / 2 + torch.arange(feat_h, dtype=torch.float64) * stride_y
        cx = stride_x / 2 + torch.arange(feat_w, dtype=torch.float64) * stride_x
        half_w, half_h = _half_sizes(spec, level, stride_y, stride_x)
        hw = torch.tensor(half_w, dtype=torch.float64)
        hh = torch.tensor(half_h, dtype=torch.float64)
        cy = cy.view(-1, 1, 1)  # [H, 1, 1]
        cx = cx.view(1, -1, 1)  # [1, W, 1]
        shape = (feat_h, feat_w, spec.num_anchors)
        boxes = torch.stack([
            (cx - hw).expand(shape), (cy - hh).expand(shape),
            (cx + hw).expand(shape), (cy + hh).expand(shape),
        ], dim=-1)  # [H, W, A, 4]
        levels.append(boxes.reshape(-1, 4))
    return torch.cat(levels).to(torch.float32)
