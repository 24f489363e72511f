"""SSD anchors (Liu et al., ECCV 2016) as the TF Object Detection API builds them: one scale per
feature map, linear from ``min_scale`` to ``max_scale``, several aspect ratios plus one box at the
scale interpolated with the next map (``ssd_anchor_generator``, TF OD API ``multiple_grid_anchor_generator.py``).

A spec plus a pure generator, like ``effml.detection.anchors`` for the RetinaNet-style grid:
``generate_ssd_anchors(spec, image_size, feature_sizes)`` gives one ``[N, 4]`` xyxy tensor in
input pixels, maps in order, inside a map ordered (row, column, box spec) -- the order an
anchor-major ``[A, K]`` head output flattens into.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from effml.errors import SpecError


@dataclass(frozen=True)
class SSDAnchorSpec:
    """TF ``ssd_anchor_generator`` fields (defaults: the SSDLite MobileDet configs).

    Map i has scale ``min + (max - min) * i / (num_layers - 1)``; every ratio is a box at that
    scale, and ``interpolated_scale_aspect_ratio`` (0 = off) adds one at sqrt(scale_i *
    scale_{i+1}) (1.0 after the last map). ``reduce_boxes_in_lowest_layer`` gives map 0 only
    (0.1, 1), (scale_0, 2), (scale_0, 0.5) -- TF's default. A box of scale s and ratio a is
    ``s * sqrt(a)`` wide and ``s / sqrt(a)`` high, in units of the shorter image side.
    """

    num_layers: int = 6
    min_scale: float = 0.2
    max_scale: float = 0.95
    # The configs write 1/3 as 0.3333; kept literal, as the checkpoints were trained with it.
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 0.3333)
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "aspect_ratios", tuple(float(a) for a in self.aspect_ratios))
        checks = [
            (isinstance(self.num_layers, int) and self.num_layers >= 2, "num_layers must be an int >= 2"),
            (0 < self.min_scale <= self.max_scale, "need 0 < min_scale <= max_scale"),
            (bool(self.aspect_ratios) and all(a > 0 for a in self.aspect_ratios),
             "aspect_ratios must be one or more positive numbers"),
            (self.interpolated_scale_aspect_ratio >= 0, "interpolated_scale_aspect_ratio must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise SpecError(f"SSDAnchorSpec: {message}, got {self}")

    def scales(self) -> list[float]:
        """The scale of each map, plus the 1.0 that closes the interpolation."""
        n = self.num_layers
        return [self.min_scale + (self.max_scale - self.min_scale) * i / (n - 1) for i in range(n)] + [1.0]

    def box_specs(self) -> list[list[tuple[float, float]]]:
        """(scale, aspect ratio) of each anchor of a location, per map (TF ``create_ssd_anchors``)."""
        scales = self.scales()
        out = []
        for layer, (scale, scale_next) in enumerate(zip(scales[:-1], scales[1:])):
            if layer == 0 and self.reduce_boxes_in_lowest_layer:
                out.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
                continue
            specs = [(scale, a) for a in self.aspect_ratios]
            if self.interpolated_scale_aspect_ratio > 0:
                specs.append((math.sqrt(scale * scale_next), self.interpolated_scale_aspect_ratio))
            out.append(specs)
        return out

    def num_anchors(self) -> list[int]:
        """Anchors per location of each map (3, 6, 6, 6, 6, 6 for the defaults)."""
        return [len(s) for s in self.box_specs()]


def generate_ssd_anchors(
    spec: SSDAnchorSpec, image_size: tuple[int, int], feature_sizes: Sequence[tuple[int, int]]
) -> torch.Tensor:
    """All anchors of an ``image_size`` (h, w) input whose maps have ``feature_sizes`` (h, w):
    float32 ``[N, 4]`` xyxy in input pixels."""
    if len(feature_sizes) != spec.num_layers:
        raise SpecError(f"SSD anchors: {len(feature_sizes)} feature maps given, the spec has "
                        f"num_layers={spec.num_layers}")
    image_h, image_w = image_size
    # Sizes are relative to the shorter side (TF scales the unit box by min(h, w) / h and / w).
    unit = float(min(image_h, image_w))
    levels = []
    for (feat_h, feat_w), specs in zip(feature_sizes, spec.box_specs()):
        # TF's default grid: stride 1 / grid size (normalised), centres offset by half a stride.
        stride_y, stride_x = image_h / feat_h, image_w / feat_w
        cy = (torch.arange(feat_h, dtype=torch.float64) + 0.5) * stride_y
        cx = (torch.arange(feat_w, dtype=torch.float64) + 0.5) * stride_x
        half_w = torch.tensor([s * math.sqrt(a) * unit / 2 for s, a in specs], dtype=torch.float64)
        half_h = torch.tensor([s / math.sqrt(a) * unit / 2 for s, a in specs], dtype=torch.float64)
        cy, cx = cy.view(-1, 1, 1), cx.view(1, -1, 1)
        shape = (feat_h, feat_w, len(specs))
        boxes = torch.stack([
            (cx - half_w).expand(shape), (cy - half_h).expand(shape),
            (cx + half_w).expand(shape), (cy + half_h).expand(shape),
        ], dim=-1)  # [H, W, A, 4]
        levels.append(boxes.reshape(-1, 4))
    return torch.cat(levels).to(torch.float32)
