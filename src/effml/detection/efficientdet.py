"""EfficientDet D0-D7x and Lite0-4 (Tan, Pang & Le, CVPR 2020): an EfficientNet backbone, a BiFPN
and shared class/box heads, scaled by one literal table.

Registered as effdet names them: ``tf_efficientdet_*`` is the TF-port flavour (TF 'SAME' padding,
conv bias kept before BN, TF EfficientNet backbone) that google/automl and effdet's ``tf_*``
checkpoints need; ``efficientdet_*`` is effdet's PyTorch-native flavour (symmetric padding, no
redundant bias). The forward returns per-level class and box outputs (P3 first); anchors, decoding
and NMS live in ``effml.detection.predictor``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import torch

from effml.detection.anchors import AnchorSpec
from effml.detection.bifpn import BiFPN
from effml.detection.detector import Detector
from effml.detection.heads import HeadNet, class_prior_bias, init_neck
from effml.detection.spec import BiFPNSpec, EfficientDetSpec
from effml.models.efficientnet import efficientnet_lite_spec, efficientnet_spec
from effml.models.network import EfficientNetFeatures
from effml.spec.entry import IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD, ModelEntry, Preprocess


class Variant(NamedTuple):
    """One row of the EfficientDet scaling table."""

    resolution: int
    backbone: str
    width: int
    cells: int
    head_repeats: int
    anchor_scale: float
    max_level: int
    fusion: str
    drop_path: float


# Variant table: google/automl hparams_config.py (efficientdet_model_param_dict;
# effdet config/model_config.py). The paper's scaling rules (W = 64 * 1.35**phi, ...) are only
# approximate; the code's table is what the checkpoints were trained with. D6 and up use plain
# sum fusion "for stability"; D7 is D6 at 1536 px with anchor scale 5; D7x adds P8.
# Backbone drop path: automl disables it for D0, 0.2 elsewhere (google/automl#690).
EFFICIENTDET_VARIANTS: dict[str, Variant] = {
    "d0": Variant(512, "b0", 64, 3, 3, 4.0, 7, "fastattn", 0.0),
    "d1": Variant(640, "b1", 88, 4, 3, 4.0, 7, "fastattn", 0.2),
    "d2": Variant(768, "b2", 112, 5, 3, 4.0, 7, "fastattn", 0.2),
    "d3": Variant(896, "b3", 160, 6, 4, 4.0, 7, "fastattn", 0.2),
    "d4": Variant(1024, "b4", 224, 7, 4, 4.0, 7, "fastattn", 0.2),
    "d5": Variant(1280, "b5", 288, 7, 4, 4.0, 7, "fastattn", 0.2),
    "d6": Variant(1280, "b6", 384, 8, 5, 4.0, 7, "sum", 0.2),
    "d7": Variant(1536, "b6", 384, 8, 5, 5.0, 7, "sum", 0.2),
    "d7x": Variant(1536, "b7", 384, 8, 5, 4.0, 8, "sum", 0.2),
    # EfficientDet-Lite (automl efficientdet_lite_param_dict): EfficientNet-Lite backbones, ReLU6,
    # sum fusion, mean 127 / std 128 inputs.
    "lite0": Variant(320, "lite0", 64, 3, 3, 3.0, 7, "sum", 0.0),
    "lite1": Variant(384, "lite1", 88, 4, 3, 3.0, 7, "sum", 0.2),
    "lite2": Variant(448, "lite2", 112, 5, 3, 3.0, 7, "sum", 0.2),
    "lite3": Variant(512, "lite3", 160, 6, 4, 4.0, 7, "sum", 0.2),
    "lite3x": Variant(640, "lite3", 200, 6, 4, 3.0, 7, "sum", 0.2),
    "lite4": Variant(640, "lite4", 224, 7, 4, 4.0, 7, "sum", 0.2),
}

# (name prefix, padding, backbone BN eps, redundant bias). The neck and heads always use TF's BN
# (eps 1e-3, momentum 0.01), as effdet's norm_kwargs do for both flavours.
FLAVOURS = (("tf_", "same", 1e-3, True), ("", "", 1e-5, False))


def efficientdet_spec(variant: str, tf_port: bool = True, num_classes: int = 90) -> EfficientDetSpec:
    """The spec of EfficientDet-``variant`` (d0..d7x, lite0..lite4) in the TF-port or native flavour."""
    v = EFFICIENTDET_VARIANTS[variant]
    _, padding, eps, redundant_bias = FLAVOURS[0 if tf_port else 1]
    lite = v.backbone.startswith("lite")
    backbone_fn = efficientnet_lite_spec if lite else efficientnet_spec
    backbone = backbone_fn(v.backbone, padding, eps).replace(resolution=v.resolution, drop_path=v.drop_path)
    return EfficientDetSpec(
        backbone=backbone,
        fpn=BiFPNSpec(width=v.width, cells=v.cells, min_level=3, max_level=v.max_level, fusion=v.fusion),
        head_repeats=v.head_repeats,
        anchors=AnchorSpec(min_level=3, max_level=v.max_level, anchor_scale=v.anchor_scale),
        num_classes=num_classes,
        resolution=v.resolution,
        act="relu6" if lite else "swish",
        padding=padding,
        redundant_bias=redundant_bias,
    )


class EfficientDet(Detector):
    """Backbone -> BiFPN -> (class_net, box_net); forward returns ``(class_outputs, box_outputs)``,
    per-level lists (P3 first) of ``[B, A*num_classes, H, W]`` and ``[B, A*4, H, W]``."""


    def __init__(self, spec: EfficientDetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = EfficientNetFeatures(spec.backbone.replace(resolution=spec.resolution),
                                             spec.backbone_indices)
        common = dict(act=spec.act, separable=spec.separable, padding=spec.padding,
                      redundant_bias=spec.redundant_bias, bn_eps=spec.bn_eps, bn_momentum=spec.bn_momentum)
        self.fpn = BiFPN(spec.fpn, self.backbone.channels, **common)
        init_neck(self.fpn)
        self.class_net = self._head(spec.num_classes, class_prior_bias())
        self.box_net = self._head(4, 0.0)

    def _head(self, outputs: int, prior_bias: float) -> HeadNet:
        s = self.spec
        return HeadNet(s.fpn.width, s.fpn.num_levels, s.head_repeats, s.anchors.num_anchors, outputs,
                       act=s.act, separable=s.separable, padding=s.padding, redundant_bias=s.redundant_bias,
                       bn_eps=s.bn_eps, bn_momentum=s.bn_momentum, prior_bias=prior_bias)

    def _class_head(self, num_classes: int) -> HeadNet:
        return self._head(num_classes, class_prior_bias())

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = self.fpn(self.backbone(x))
        return self.class_net(features), self.box_net(features)


def _entries() -> tuple[ModelEntry, ...]:
    entries = []
    for prefix, *_ in FLAVOURS:
        for name, v in EFFICIENTDET_VARIANTS.items():
            lite = v.backbone.startswith("lite")
            mean, std = (LITE_MEAN, LITE_STD) if lite else (IMAGENET_MEAN, IMAGENET_STD)
            entries.append(ModelEntry(
                name=f"{prefix}efficientdet_{name}", family="efficientdet_lite" if lite else "efficientdet",
                spec_fn=partial(efficientdet_spec, name, bool(prefix)),
                preprocess=Preprocess(v.resolution, 1.0, mean, std, interpolation="bilinear"),
                task="detect",
            ))
    return tuple(entries)


# The zoo entries of this family (both flavours), collected by effml.zoo.
ENTRIES = _entries()
