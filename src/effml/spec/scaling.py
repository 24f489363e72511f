"""Compound scaling (EfficientNet paper, section 3.3) as a function spec -> spec, and scaling a
spec to a MACs budget.

Rounding follows the TF reference exactly (tensorflow/tpu ``models/official/efficientnet``,
``efficientnet_model.round_filters`` / ``round_repeats``), which timm's ``make_divisible``
and ``round_channels`` reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Generic, NamedTuple, TypeVar

from effml.errors import SpecError
from effml.spec.blocks import NetworkSpec

T = TypeVar("T")


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


class MacsMatch(NamedTuple, Generic[T]):
    """What ``scale_to_macs`` found: the knob's value, the member there and its MACs."""

    value: float
    member: T
    macs: float


def scale_to_macs(family: Callable[[float], T], count: Callable[[T], float], target: float, *, start: float,
                  bounds: tuple[float, float], grid: float | None = None, tolerance: float = 0.0) -> MacsMatch[T]:
    """The member ``family(knob)`` whose MACs (``count``) come closest to ``target``, for a scaling
    knob (a width multiplier, phi) along which the MACs never fall.

    Whole channels and repeats make the MACs a staircase in the knob. From ``start`` and a guess
    (MACs about the square of a width knob), the target is bracketed (the knob widened by 1.25x,
    within ``bounds``) and bisected. A continuous knob stops after 12 halvings or at a bracket of
    1e-4, or early at a member within ``tolerance`` (|log(MACs / target)|): few counts, for a
    counter as costly as a detector's forward pass. On a ``grid`` (knob = k x grid) it finds the
    nearest step exactly, at the first grid value that reaches it (what scanning the grid gives).
    Raises ``SpecError`` when the target lies outside ``bounds``.
    """
    cache: dict[float, MacsMatch[T]] = {}

    def at(knob: float) -> MacsMatch[T]:
        if grid is not None:
            knob = round(knob / grid) * grid
        if knob not in cache:
            member = family(knob)
            cache[knob] = MacsMatch(knob, member, count(member))
        return cache[knob]

    def widened(m: MacsMatch[T], up: bool) -> MacsMatch[T]:
        out = at(m.value * 1.25 if up else m.value / 1.25)
        if grid is not None and out.value == m.value:  # on a grid, at least one step
            out = at(m.value + (grid if up else -grid))
        return out

    def off(m: MacsMatch[T]) -> float:
        return abs(math.log(m.macs / target))

    first = at(start)
    guess = at(first.value * math.sqrt(target / first.macs))
    lo = hi = None
    for m in (first, guess):
        if m.macs <= target and (lo is None or m.value > lo.value):
            lo = m
        if m.macs >= target and (hi is None or m.value < hi.value):
            hi = m
    while lo is None or hi is None:
        if lo is None:
            lo = widened(hi, up=False)
            lo, hi = (lo, hi) if lo.macs <= target else (None, lo)
        else:
            hi = widened(lo, up=True)
            lo, hi = (lo, hi) if hi.macs >= target else (hi, None)
        edge = (lo or hi).value
        if not bounds[0] <= edge <= bounds[1]:
            raise SpecError(f"no knob value in [{bounds[0]:g}, {bounds[1]:g}] gives {target / 1e6:.3g}M MACs "
                            f"({edge:g} gives {(lo or hi).macs / 1e6:.3g}M); change the MACs target or the bounds")
    resolution = 1e-4 if grid is None else 1.5 * grid
    halvings = 0
    while (min(off(lo), off(hi)) > tolerance and hi.value - lo.value >= resolution
           and (grid is not None or halvings < 12)):
        mid = at((lo.value + hi.value) / 2)
        lo, hi = (mid, hi) if mid.macs <= target else (lo, mid)
        halvings += 1
    best = min((lo, hi), key=off)
    if grid is None:
        return best
    # the first grid value of best's step: bisect down from the last value counted below it
    below = max((m for m in cache.values() if m.macs < best.macs), key=lambda m: m.value, default=None)
    if below is None:
        below = at(bounds[0])
        if below.macs >= best.macs:
            return below
    while best.value - below.value >= resolution:
        mid = at((below.value + best.value) / 2)
        below, best = (mid, best) if mid.macs < best.macs else (below, mid)
    return best
