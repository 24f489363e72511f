"""Channel arithmetic shared by the layer plan and the modules: expansion, SE width, Tucker ranks,
MixConv splits. Pure integer functions, so the spec layer computes every width the modules build.
"""

from __future__ import annotations


def expanded_channels(in_channels: int, expand_ratio: float) -> int:
    """The expanded width of an inverted bottleneck: ``in * e`` rounded to nearest (timm
    ``make_divisible(in * e, 1)`` as ``InvertedResidual`` / ``EdgeResidual`` use it)."""
    return int(round(in_channels * expand_ratio))


def se_reduced_channels(in_channels: int, se_ratio: float) -> int:
    """SE bottleneck width from the block *input* channels (TF ``num_reduced_filters``)."""
    return max(1, int(in_channels * se_ratio))


def scale_filters(filters: float, multiplier: float, base: int = 8) -> int:
    """``filters * multiplier`` rounded half-up to a multiple of ``base``, at least ``base``.

    The rounding of the MobileDet reference (``_scale_filters``): Tucker ranks, SE widths and
    the backbone's width multiplier. Unlike ``round_filters`` it may round down by more than 10%.
    """
    return max(base, int(int(filters) * multiplier / base + 0.5) * base)


def split_channels(channels: int, groups: int) -> list[int]:
    """Equal split with the remainder on the first group (TF ``custom_layers._split_channels``)."""
    split = [channels // groups] * groups
    split[0] += channels - sum(split)
    return split
