"""MixNet-S/M/L (Tan & Le, BMVC 2019): MixConv depthwise kernels and grouped 1x1 convs.

Tables are the TF reference ``mnasnet/mixnet/mixnet_builder.py`` rows in timm's block notation
(tensorflow/tpu; timm ``_gen_mixnet_s`` / ``_gen_mixnet_m``). Stem, head and the first stages use ReLU; later stages
override to swish (``nsw``). MixNet-L is MixNet-M with width x1.3, head kept at 1536. TF MixNet
has no stochastic depth.
"""

from __future__ import annotations

from functools import partial

from effml.models.efficientnet import FLAVOURS
from effml.spec.entry import ModelEntry, Preprocess
from effml.spec import NetworkSpec, compound_scale, parse_arch

MIXNET_S_ARCH = [
    ["ds_r1_k3_s1_e1_c16"],
    ["ir_r1_k3_a1.1_p1.1_s2_e6_c24", "ir_r1_k3_a1.1_p1.1_s1_e3_c24"],
    ["ir_r1_k3.5.7_s2_e6_c40_se0.5_nsw", "ir_r3_k3.5_a1.1_p1.1_s1_e6_c40_se0.5_nsw"],
    ["ir_r1_k3.5.7_p1.1_s2_e6_c80_se0.25_nsw", "ir_r2_k3.5_p1.1_s1_e6_c80_se0.25_nsw"],
    ["ir_r1_k3.5.7_a1.1_p1.1_s1_e6_c120_se0.5_nsw", "ir_r2_k3.5.7.9_a1.1_p1.1_s1_e3_c120_se0.5_nsw"],
    ["ir_r1_k3.5.7.9.11_s2_e6_c200_se0.5_nsw", "ir_r2_k3.5.7.9_p1.1_s1_e6_c200_se0.5_nsw"],
]
MIXNET_M_ARCH = [
    ["ds_r1_k3_s1_e1_c24"],
    ["ir_r1_k3.5.7_a1.1_p1.1_s2_e6_c32", "ir_r1_k3_a1.1_p1.1_s1_e3_c32"],
    ["ir_r1_k3.5.7.9_s2_e6_c40_se0.5_nsw", "ir_r3_k3.5_a1.1_p1.1_s1_e6_c40_se0.5_nsw"],
    ["ir_r1_k3.5.7_s2_e6_c80_se0.25_nsw", "ir_r3_k3.5.7.9_a1.1_p1.1_s1_e6_c80_se0.25_nsw"],
    ["ir_r1_k3_s1_e6_c120_se0.5_nsw", "ir_r3_k3.5.7.9_a1.1_p1.1_s1_e3_c120_se0.5_nsw"],
    ["ir_r1_k3.5.7.9_s2_e6_c200_se0.5_nsw", "ir_r3_k3.5.7.9_p1.1_s1_e6_c200_se0.5_nsw"],
]
# (arch, stem, dropout, width multiplier) per TF mixnet_builder.mixnet_{s,m,l}.
MIXNET_PARAMS = {
    "s": (MIXNET_S_ARCH, 16, 0.2, 1.0),
    "m": (MIXNET_M_ARCH, 24, 0.25, 1.0),
    "l": (MIXNET_M_ARCH, 24, 0.25, 1.3),
}


def mixnet_spec(variant: str, padding: str = "", bn_eps: float = 1e-5) -> NetworkSpec:
    """MixNet-S/M/L; L is M scaled in width by 1.3 with the 1536 head fixed."""
    arch, stem, dropout, width = MIXNET_PARAMS[variant]
    base = NetworkSpec(stages=parse_arch(arch), stem_channels=stem, head_channels=1536,
                       act="relu", dropout=dropout, padding=padding, bn_eps=bn_eps)
    return compound_scale(base, width=width, fix_head=True)


# The zoo entries of this family (both flavours), collected by effml.zoo.
ENTRIES = tuple(
    ModelEntry(
        name=f"{prefix}mixnet_{v}", family="mixnet",
        spec_fn=partial(mixnet_spec, v, padding, eps),
        preprocess=Preprocess(224, 0.875),
    )
    for prefix, padding, eps in FLAVOURS for v in MIXNET_PARAMS
)
