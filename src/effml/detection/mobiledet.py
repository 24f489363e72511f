"""MobileDets (Xiong et al., "MobileDets: Searching for Object Detection Architectures for Mobile
Accelerators", CVPR 2021): the four searched backbones as literal layer tables.

Tables: from tensorflow/models
``research/object_detection/models/ssd_mobiledet_feature_extractor.py`` (``mobiledet_*_backbone``).
Each table becomes a ``NetworkSpec`` built by the one builder: IBN is ``ir`` (MBConv),
IBN without expansion ``ds``, fused IBN ``er`` (FusedMBConv), Tucker ``tucker`` (TuckerConv).
One stage per endpoint, so the builder's taps are the reference endpoints: tap i is C(i+1), at
stride 2**(i+1); SSDLite reads C4 (tap 3, stride 16: the output of the last stride-16 block, as
the TF ``endpoints['C4']``) and C5 (tap 4, stride 32).
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from effml.errors import SpecError
from effml.layers import scale_filters, se_reduced_channels
from effml.spec import BlockSpec, NetworkSpec

IBN, NOEXP, FUSED, TUCKER = "ibn", "ibn_noexp", "fused", "tucker"
R, NR = True, False  # residual / no residual, the reference's `r` / `nr`


class Layer(NamedTuple):
    """One row of a MobileDet table: block, expansion, kernel, stride, filters, residual.

    For ``TUCKER`` the expansion column holds the (input, output) compression pair.
    """

    block: str
    expansion: float | tuple[float, float]
    kernel: int
    stride: int
    filters: int
    residual: bool


class MobileDetTable(NamedTuple):
    """A backbone: stem width, activation, SE on every IBN or not, and the rows up to C1..C5."""

    stem: int
    act: str
    se: bool
    endpoints: tuple[tuple[Layer, ...], ...]  # rows ending at C1, C2, C3, C4, C5


L = Layer
# Filters before the width multiplier; kernel 3 unless stated. Stem: 3x3/2 conv + BN + act.
MOBILEDET_TABLES: dict[str, MobileDetTable] = {
    # All IBNs with SE, h-swish everywhere.
    "cpu": MobileDetTable(16, "hard_swish", True, (
        (L(NOEXP, 1, 3, 1, 8, NR),),
        (L(IBN, 4, 3, 2, 16, NR),),
        (L(IBN, 8, 3, 2, 32, NR), L(IBN, 4, 3, 1, 32, R), L(IBN, 4, 3, 1, 32, R), L(IBN, 4, 3, 1, 32, R)),
        (L(IBN, 8, 5, 2, 72, NR), L(IBN, 8, 3, 1, 72, R), L(IBN, 4, 5, 1, 72, R), L(IBN, 4, 3, 1, 72, R),
         L(IBN, 8, 3, 1, 72, NR), L(IBN, 8, 3, 1, 72, R), L(IBN, 8, 3, 1, 72, R), L(IBN, 8, 3, 1, 72, R)),
        (L(IBN, 8, 5, 2, 104, NR), L(IBN, 4, 5, 1, 104, R), L(IBN, 4, 5, 1, 104, R),
         L(IBN, 4, 3, 1, 104, R), L(IBN, 8, 3, 1, 144, NR)),
    )),
    "dsp": MobileDetTable(32, "relu6", False, (
        (L(NOEXP, 1, 3, 1, 24, NR),),
        (L(FUSED, 4, 3, 2, 32, NR), L(FUSED, 4, 3, 1, 32, R), L(IBN, 4, 3, 1, 32, R),
         L(TUCKER, (0.25, 0.75), 3, 1, 32, R)),
        (L(FUSED, 8, 3, 2, 64, NR), L(IBN, 4, 3, 1, 64, R), L(FUSED, 4, 3, 1, 64, R),
         L(FUSED, 4, 3, 1, 64, R)),
        (L(FUSED, 8, 3, 2, 120, NR), L(IBN, 4, 3, 1, 120, R), L(IBN, 8, 3, 1, 120, R),
         L(IBN, 8, 3, 1, 120, R), L(FUSED, 8, 3, 1, 144, NR), L(IBN, 8, 3, 1, 144, R),
         L(IBN, 8, 3, 1, 144, R), L(IBN, 8, 3, 1, 144, R)),
        (L(IBN, 4, 3, 2, 160, NR), L(IBN, 4, 3, 1, 160, R), L(FUSED, 4, 3, 1, 160, R),
         L(TUCKER, (0.75, 0.75), 3, 1, 160, R), L(IBN, 8, 3, 1, 240, NR)),
    )),
    "edgetpu": MobileDetTable(32, "relu6", False, (
        (L(TUCKER, (0.25, 0.75), 3, 1, 16, NR),),
        (L(FUSED, 8, 3, 2, 16, NR), L(FUSED, 4, 3, 1, 16, R), L(FUSED, 8, 3, 1, 16, R),
         L(FUSED, 4, 3, 1, 16, R)),
        (L(FUSED, 8, 5, 2, 40, NR), L(FUSED, 4, 3, 1, 40, R), L(FUSED, 4, 3, 1, 40, R),
         L(FUSED, 4, 3, 1, 40, R)),
        (L(IBN, 8, 3, 2, 72, NR), L(IBN, 8, 3, 1, 72, R), L(FUSED, 4, 3, 1, 72, R), L(FUSED, 4, 3, 1, 72, R),
         L(IBN, 8, 5, 1, 96, NR), L(IBN, 8, 5, 1, 96, R), L(IBN, 8, 3, 1, 96, R), L(IBN, 8, 3, 1, 96, R)),
        (L(IBN, 8, 5, 2, 120, NR), L(IBN, 8, 3, 1, 120, R), L(IBN, 4, 5, 1, 120, R),
         L(IBN, 8, 3, 1, 120, R), L(IBN, 8, 5, 1, 384, NR)),
    )),
    # Only in newer versions of the reference file.
    "gpu": MobileDetTable(32, "relu6", False, (
        (L(TUCKER, (0.25, 0.25), 3, 1, 16, NR),),
        (L(FUSED, 8, 3, 2, 32, NR), L(TUCKER, (0.25, 0.25), 3, 1, 32, R),
         L(TUCKER, (0.25, 0.25), 3, 1, 32, R), L(TUCKER, (0.25, 0.25), 3, 1, 32, R)),
        (L(FUSED, 8, 3, 2, 64, NR), L(FUSED, 8, 3, 1, 64, R), L(FUSED, 8, 3, 1, 64, R),
         L(FUSED, 4, 3, 1, 64, R)),
        (L(FUSED, 8, 3, 2, 128, NR), L(FUSED, 4, 3, 1, 128, R), L(FUSED, 4, 3, 1, 128, R),
         L(FUSED, 4, 3, 1, 128, R), L(FUSED, 8, 3, 1, 128, NR), L(FUSED, 8, 3, 1, 128, R),
         L(FUSED, 8, 3, 1, 128, R), L(FUSED, 8, 3, 1, 128, R)),
        (L(FUSED, 4, 3, 2, 128, NR), L(FUSED, 4, 3, 1, 128, R), L(FUSED, 4, 3, 1, 128, R),
         L(FUSED, 4, 3, 1, 128, R), L(IBN, 8, 3, 1, 384, NR)),
    )),
}
del L

# The reference backbone's BN: decay 0.99 (PyTorch momentum 0.01), epsilon 0.01.
BN_EPS, BN_MOMENTUM = 0.01, 0.01
SE_FRACTION = 0.25  # SE width: round8(expanded channels * 0.25)


def _se_ratio(in_channels: int, expansion: float) -> float:
    """The MobileDet SE width round8(in * e * 0.25), as effml's ratio of the block *input*."""
    width = scale_filters(in_channels * expansion, SE_FRACTION)
    ratio = width / in_channels
    # The ratio must survive the block notation (printed with 6 significant digits) exactly.
    if se_reduced_channels(in_channels, float(f"{ratio:g}")) != width:
        raise SpecError(f"MobileDet SE width {width} of a {in_channels}-channel block is not a ratio "
                        f"the block notation can hold exactly; choose another width multiplier")
    return ratio


def _block(layer: Layer, in_channels: int, filters: int, se: bool) -> BlockSpec:
    common = dict(kernel_size=(layer.kernel,), stride=layer.stride, out_channels=filters, skip=layer.residual)
    if layer.block == TUCKER:
        r_in, r_out = layer.expansion  # type: ignore[misc]
        return BlockSpec("tucker", input_compression=r_in, output_compression=r_out, **common)
    e = float(layer.expansion)  # type: ignore[arg-type]
    se_ratio = _se_ratio(in_channels, e) if se else 0.0
    kind = {IBN: "ir", NOEXP: "ds", FUSED: "er"}[layer.block]
    return BlockSpec(kind, expand_ratio=e, se_ratio=se_ratio, **common)


def _merge_repeats(stage: list[BlockSpec]) -> tuple[BlockSpec, ...]:
    """Consecutive rows that repeat the one before at stride 1 as one row with repeats (the
    builder gives only the first repeat the row's stride), so the spec prints compactly."""
    out: list[BlockSpec] = []
    for b in stage:
        if out and b == replace(out[-1], repeats=1, stride=1):
            out[-1] = replace(out[-1], repeats=out[-1].repeats + 1)
        else:
            out.append(b)
    return tuple(out)


def mobiledet_spec(variant: str, multiplier: float = 1.0, resolution: int = 320) -> NetworkSpec:
    """The backbone spec of MobileDet-``variant`` (cpu, dsp, edgetpu, gpu) at a width multiplier.

    Widths scale by the reference rule (``scale_filters``: half-up to a multiple of 8). The spec
    has no classifier (``num_classes=0``); its ``head_channels`` is the C5 width.
    """
    if variant not in MOBILEDET_TABLES:
        raise SpecError(f"unknown MobileDet variant {variant!r}; use one of {sorted(MOBILEDET_TABLES)}")
    table = MOBILEDET_TABLES[variant]
    in_channels = stem = scale_filters(table.stem, multiplier)
    stages = []
    for rows in table.endpoints:
        stage = []
        for layer in rows:
            filters = scale_filters(layer.filters, multiplier)
            stage.append(_block(layer, in_channels, filters, table.se))
            in_channels = filters
        stages.append(_merge_repeats(stage))
    return NetworkSpec(stages=tuple(stages), stem_channels=stem, head_channels=in_channels, num_classes=0,
                       act=table.act, resolution=resolution, dropout=0.0, bn_eps=BN_EPS,
                       bn_momentum=BN_MOMENTUM)
