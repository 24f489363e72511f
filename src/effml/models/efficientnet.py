"""EfficientNet B0-B8, L2 and EfficientNet-Lite0-4 (Tan & Le, ICML 2019; TF lite/ README).

One base table (B0, paper Table 1) and one coefficient table; every variant is
``compound_scale(B0, ...)``. Each is registered twice, as timm names them: the PyTorch flavour
(``efficientnet_b0``: symmetric padding, BN eps 1e-5) and the TF-port flavour needed by timm's
``tf_*`` weights (``tf_efficientnet_b0``: TF 'SAME' padding, BN eps 1e-3).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from effml.spec.entry import (
    IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, ModelEntry, Preprocess, tf_crop_pct,
)
from effml.spec import NetworkSpec, compound_scale, parse_arch

# EfficientNet-B0, arXiv 1905.11946 Table 1 / TF efficientnet_builder.py (timm block notation).
B0_ARCH = [
    ["ds_r1_k3_s1_e1_c16_se0.25"],
    ["ir_r2_k3_s2_e6_c24_se0.25"],
    ["ir_r2_k5_s2_e6_c40_se0.25"],
    ["ir_r3_k3_s2_e6_c80_se0.25"],
    ["ir_r3_k5_s1_e6_c112_se0.25"],
    ["ir_r4_k5_s2_e6_c192_se0.25"],
    ["ir_r1_k3_s1_e6_c320_se0.25"],
]

# (width, depth, resolution, dropout): TF efficientnet_builder.efficientnet_params,
# tensorflow/tpu models/official/efficientnet.
EFFICIENTNET_PARAMS: dict[str, tuple[float, float, int, float]] = {
    "b0": (1.0, 1.0, 224, 0.2),
    "b1": (1.0, 1.1, 240, 0.2),
    "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3),
    "b4": (1.4, 1.8, 380, 0.4),
    "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5),
    "b7": (2.0, 3.1, 600, 0.5),
    "b8": (2.2, 3.6, 672, 0.5),
    "l2": (4.3, 5.3, 800, 0.5),
}
# TF lite/efficientnet_lite_builder.py (Lite3/4 TF builder resolutions; timm's tf_ weights were
# evaluated at 300/380, see LITE_EVAL_SIZE).
EFFICIENTNET_LITE_PARAMS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}
LITE_EVAL_SIZE = {"lite3": 300, "lite4": 380}  # timm pretrained cfgs of tf_efficientnet_lite3/4

# The two flavours: (name prefix, padding, BN eps). Momentum stays PyTorch's 0.1 as in timm; the
# TF training recipe sets 0.01 through the training config.
FLAVOURS = (("", "", 1e-5), ("tf_", "same", 1e-3))


def efficientnet_b0_spec() -> NetworkSpec:
    """The unscaled B0 spec in the PyTorch flavour."""
    return NetworkSpec(stages=parse_arch(B0_ARCH), stem_channels=32, head_channels=1280)


def efficientnet_spec(variant: str, padding: str = "", bn_eps: float = 1e-5) -> NetworkSpec:
    """EfficientNet-B0..B8/L2 as compound scaling of B0."""
    width, depth, res, dropout = EFFICIENTNET_PARAMS[variant]
    spec = compound_scale(efficientnet_b0_spec(), width, depth, res, dropout)
    return spec.replace(padding=padding, bn_eps=bn_eps)


def efficientnet_lite_spec(variant: str, padding: str = "", bn_eps: float = 1e-5) -> NetworkSpec:
    """EfficientNet-Lite: B0 without SE, ReLU6, fixed stem/head and first/last stage depth."""
    width, depth, res, dropout = EFFICIENTNET_LITE_PARAMS[variant]
    base = efficientnet_b0_spec()
    no_se = tuple(tuple(replace(b, se_ratio=0.0) for b in st) for st in base.stages)
    base = base.replace(stages=no_se, act="relu6")
    spec = compound_scale(base, width, depth, res, dropout,
                          fix_stem=True, fix_head=True, fix_first_last=True)
    return spec.replace(padding=padding, bn_eps=bn_eps)


def _entries() -> tuple[ModelEntry, ...]:
    entries = []
    for prefix, padding, eps in FLAVOURS:
        for v, (_, _, res, _) in EFFICIENTNET_PARAMS.items():
            entries.append(ModelEntry(
                name=f"{prefix}efficientnet_{v}", family="efficientnet",
                spec_fn=partial(efficientnet_spec, v, padding, eps),
                preprocess=Preprocess(res, tf_crop_pct(res), IMAGENET_MEAN, IMAGENET_STD),
            ))
        for v, (_, _, res, _) in EFFICIENTNET_LITE_PARAMS.items():
            size = LITE_EVAL_SIZE.get(v, res) if prefix else res
            mean, std = (LITE_MEAN, LITE_STD) if prefix else (IMAGENET_MEAN, IMAGENET_STD)
            entries.append(ModelEntry(
                name=f"{prefix}efficientnet_{v}", family="efficientnet_lite",
                spec_fn=partial(efficientnet_lite_spec, v, padding, eps),
                preprocess=Preprocess(size, tf_crop_pct(size), mean, std),
            ))
    return tuple(entries)


# The zoo entries of this family (both flavours), collected by effml.zoo.
ENTRIES = _entries()
