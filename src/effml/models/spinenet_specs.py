"""SpineNet's architecture tables (Du et al., "SpineNet: Learning Scale-Permuted Backbone for
Recognition and Localization", CVPR 2020; SpineNet-Mobile: Du et al., arXiv 2010.11426).

Literal tables with an explicit column schema, as tensorflow/models
``official/vision/modeling/backbones/spinenet.py`` and ``spinenet_mobile.py`` keep them
(``SPINENET_BLOCK_SPECS``, ``SCALING_MAP``). A row is ``(level, block_fn, input_offsets, is_output)``;
offsets index the running list of blocks (the two stem blocks are 0 and 1, spec row i is block
i + 2).
"""

from __future__ import annotations

from typing import NamedTuple

BLOCK_SPEC_SCHEMA = ("level", "block_fn", "input_offsets", "is_output")

# The scale-permuted SpineNet-49 found by NAS (spinenet.py SPINENET_BLOCK_SPECS). The last row (a level-2 output)
# feeds nothing at P3-P7 and is not built for them (the TF Keras model drops it too; the
# tensorflow/tpu table that the MODEL_ZOO numbers come from leaves it out).
SPINENET_BLOCK_SPECS = (
    (2, "bottleneck", (0, 1), False),
    (4, "residual", (0, 1), False),
    (3, "bottleneck", (2, 3), False),
    (4, "bottleneck", (2, 4), False),
    (6, "residual", (3, 5), False),
    (4, "bottleneck", (3, 5), False),
    (5, "residual", (6, 7), False),
    (7, "residual", (6, 8), False),
    (5, "bottleneck", (8, 9), False),
    (5, "bottleneck", (8, 10), False),
    (4, "bottleneck", (5, 10), True),
    (3, "bottleneck", (4, 10), True),
    (5, "bottleneck", (7, 12), True),
    (7, "bottleneck", (5, 14), True),
    (6, "bottleneck", (12, 14), True),
    (2, "bottleneck", (2, 13), True),
)

# The scale-decreased baseline of SpineNet's comparison (arXiv 1912.05027, section 3.3 and Figure 4a:
# a ResNet backbone with an FPN decoder), written as a member of the scale-permuted space
# (``effml.search.spaces.scale_permuted``, the released space of google/vertex-ai-nas
# ``tunable_spinenet_search_space.py``: intermediate levels {L2: 1, L3: 3, L4: 5, L5: 2}, two inputs per
# block). The intermediate blocks come in increasing level, each merging the two blocks before it (a
# ResNet whose block also sees the one before its parent); then the outputs as RetinaNet's FPN makes
# them: P6 and P7 on top of C5, then top-down P5, P4 (lateral C4 + P5), P3 (lateral C3 + P4).
SCALE_DECREASED_BLOCK_SPECS = (
    (2, "bottleneck", (0, 1), False),
    (3, "bottleneck", (1, 2), False),
    (3, "bottleneck", (2, 3), False),
    (3, "bottleneck", (3, 4), False),
    (4, "bottleneck", (4, 5), False),
    (4, "bottleneck", (5, 6), False),
    (4, "bottleneck", (6, 7), False),
    (4, "bottleneck", (7, 8), False),
    (4, "bottleneck", (8, 9), False),
    (5, "bottleneck", (9, 10), False),
    (5, "bottleneck", (10, 11), False),
    (6, "bottleneck", (11, 12), True),
    (7, "bottleneck", (12, 13), True),
    (5, "bottleneck", (11, 12), True),
    (4, "bottleneck", (10, 15), True),
    (3, "bottleneck", (5, 16), True),
)

# Block filters per level before filter_size_scale; a bottleneck outputs 4x, a residual 1x.
FILTER_SIZE_MAP = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}


class Scaling(NamedTuple):
    """One row of the SpineNet scaling map."""

    endpoints_num_filters: int
    filter_size_scale: float
    resample_alpha: float
    block_repeats: int


# tensorflow/models spinenet.py SCALING_MAP. 96/143/190 repeat every block 2/3/4 times; 143L and
# 190 widen every block by 1.3.
SCALING_MAP = {
    "49S": Scaling(128, 0.65, 0.5, 1),
    "49": Scaling(256, 1.0, 0.5, 1),
    "96": Scaling(256, 1.0, 0.5, 2),
    "143": Scaling(256, 1.0, 1.0, 3),
    "143L": Scaling(256, 1.3, 1.0, 3),
    "190": Scaling(512, 1.3, 1.0, 4),
}

# SpineNet-Mobile (tensorflow/models spinenet_mobile.py): the same permutation with MBConv blocks.
# Offsets differ from SpineNet-49's because the mobile stem's two blocks are at levels 1 and 2.
SPINENET_MOBILE_BLOCK_SPECS = (
    (2, "mbconv", (0, 1), False),
    (2, "mbconv", (1, 2), False),
    (4, "mbconv", (1, 2), False),
    (3, "mbconv", (3, 4), False),
    (4, "mbconv", (3, 5), False),
    (6, "mbconv", (4, 6), False),
    (4, "mbconv", (4, 6), False),
    (5, "mbconv", (7, 8), False),
    (7, "mbconv", (7, 9), False),
    (5, "mbconv", (9, 10), False),
    (5, "mbconv", (9, 11), False),
    (4, "mbconv", (6, 11), True),
    (3, "mbconv", (5, 11), True),
    (5, "mbconv", (8, 13), True),
    (7, "mbconv", (6, 15), True),
    (6, "mbconv", (13, 15), True),
)

# Level 0 is the stem conv's width; MBConv blocks output exactly these widths.
MOBILE_FILTER_SIZE_MAP = {0: 8, 1: 16, 2: 24, 3: 40, 4: 80, 5: 112, 6: 112, 7: 112}


class MobileScaling(NamedTuple):
    """One row of the SpineNet-Mobile scaling map (no resample alpha: no alpha 1x1 convs)."""

    endpoints_num_filters: int
    filter_size_scale: float
    block_repeats: int


MOBILE_SCALING_MAP = {
    "49": MobileScaling(48, 1.0, 1),
    "49S": MobileScaling(40, 0.65, 1),
    "49XS": MobileScaling(24, 0.6, 1),
}

# MBConv settings of SpineNet-Mobile (spinenet_mobile.py defaults): expansion 6, 3x3 depthwise,
# SE 0.2 of the block input width with a ReLU inside and a hard-sigmoid gate.
MOBILE_EXPAND_RATIO = 6.0
MOBILE_SE_RATIO = 0.2
