"""Compound scaling (EfficientNet paper, section 3.3) as a function spec -> spec.

Rounding follows the TF reference exactly (tensorflow/tpu ``models/official/efficientnet``,
``efficientnet_model.round_filters`` / ``round_repeats``), which timm's ``make_divisible``
and ``round_channels`` reproduce.
"""

from __future__ import annotations

import math
from dataclasses import replace

from effml.spec.blocks import NetworkSpec


def round_filters(channels: int, width: float, divisor: int = 8, min_depth: int | None = None) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (never down >10%)."""
    if not width:
        return channels
    filters = channels * width
    min_depth = min_depth or divisor
    new = max(min_depth, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a block row's repeats by ``depth``, rounding up."""
    return int(math.ceil(depth * repeats))


def compound_scale(
    spec: NetworkSpec,
    width: float = 1.0,
    depth: float = 1.0,
    resolution: int | None = None,
    dropout: float | None = None,
    *,
    fix_stem: bool = False,
    fix_head: bool = False,
    fix_first_last: bool = False,
    divisor: int = 8,
) -> NetworkSpec:
    """Scale width (channels), depth (repeats) and resolution of a spec.

    ``fix_stem``/``fix_head`` keep those widths (EfficientNet-Lite keeps stem 32 / head 1280;
    MixNet keeps head 1536); ``fix_first_last`` keeps the repeats of the first and last stage
    (EfficientNet-Lite, ``lite/efficientnet_lite_builder.py``). ``divisor`` is the TF reference's
    ``depth_divisor`` (8 in every released model): channel counts round to its multiples.
    """
    last = len(spec.stages) - 1
    stages = []
    for i, stage in enumerate(spec.stages):
        keep_depth = fix_first_last and i in (0, last)
        stages.append(tuple(
            replace(
                b,
                out_channels=round_filters(b.out_channels, width, divisor),
                repeats=b.repeats if keep_depth else round_repeats(b.repeats, depth),
            )
            for b in stage
        ))
    return replace(
        spec,
        stages=tuple(stages),
        stem_channels=spec.stem_channels if fix_stem else round_filters(spec.stem_channels, width, divisor),
        head_channels=spec.head_channels if fix_head else round_filters(spec.head_channels, width, divisor),
        resolution=spec.resolution if resolution is None else resolution,
        dropout=spec.dropout if dropout is None else dropout,
    )
