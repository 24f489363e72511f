"""RetinaNet (Lin et al., ICCV 2017) on SpineNet backbones, as the SpineNet paper trains it:
the backbone's P3-P7 endpoints go straight to the heads (decoder 'identity', no FPN).

Heads (tensorflow/tpu ``configs/spinenet/*.yaml``): ``head_convs`` 3x3 convs shared by every level with a
BN per level, then a prediction conv, for classes and for boxes; 4 x 256 (49S: 4 x 128, 190:
7 x 512); SpineNet-Mobile: separable convs of 48/40/24 filters. Anchors: 3 octave scales, ratios
0.5/1/2, anchor size 3 (49S, 49, 96, mobile) or 4 (143, 190) as the configs set it. Activation
swish everywhere (the tensorflow/tpu configs behind the results table; tensorflow/models' mobile
configs use hard-swish). The forward, anchors, box coder and head reset follow ``EfficientDet``,
so the predictor, the engine and the CLI use it unchanged. The loss is the engine's: focal alpha
0.25, gamma 1.5, Huber delta 0.1, box weight 50 -- the values of the TF RetinaNet configs and of
EfficientDet (the RetinaNet paper had gamma 2 and smooth-L1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import torch
from torch import nn

from effml.detection.anchors import AnchorSpec
from effml.detection.detector import Detector
from effml.detection.heads import HeadNet, class_prior_bias
from effml.errors import SpecError
from effml.layers.init import variance_scaling_
from effml.layers.separable import ConvNormAct, SeparableConv2d
from effml.models.spinenet import SpineNet, SpineNetSpec, spinenet_mobile_spec, spinenet_spec
from effml.spec import ComposedSpec
from effml.spec.entry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, Preprocess

RETINANET_ASPECT_RATIOS = (0.5, 1.0, 2.0)  # TF RetinaNet anchor order (tensorflow/models configs/retinanet.py)


@dataclass(frozen=True)
class RetinaNetSpec(ComposedSpec):
    """RetinaNet: a backbone giving P<min>..P<max>, shared class/box heads, anchors."""

    backbone: SpineNetSpec
    head_convs: int = 4
    head_filters: int = 256
    separable: bool = False
    anchors: AnchorSpec = field(default_factory=lambda: AnchorSpec(aspect_ratios=RETINANET_ASPECT_RATIOS))
    num_classes: int = 90
    resolution: int = 640
    act: str = "swish"
    redundant_bias: bool = True  # the TF head convs keep their bias before the per-level BN
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    padding: str = ""

    def __post_init__(self) -> None:
        b = self.backbone
        if not isinstance(b, SpineNetSpec):
            raise SpecError(f"RetinaNet backbone must be a SpineNetSpec, got {type(b).__name__}")
        if (self.anchors.min_level, self.anchors.max_level) != (b.min_level, b.max_level):
            raise SpecError(f"RetinaNet: anchor levels {self.anchors.min_level}..{self.anchors.max_level} "
                            f"differ from the backbone's endpoints {b.min_level}..{b.max_level}")
        if self.head_convs < 0 or self.head_filters < 1:
            raise SpecError(f"RetinaNet: need head_convs >= 0 and head_filters >= 1, got "
                            f"{self.head_convs} x {self.head_filters}")
        if self.head_filters != b.endpoints_num_filters and self.head_convs == 0:
            raise SpecError(f"RetinaNet: head_filters {self.head_filters} differs from the backbone's "
                            f"endpoints_num_filters {b.endpoints_num_filters}, so the head needs at "
                            f"least one conv (head_convs >= 1) to change the width")
        if self.num_classes < 1:
            raise SpecError(f"RetinaNet: num_classes must be >= 1, got {self.num_classes}")



class RetinaNet(Detector):
    """Backbone -> (class_net, box_net); forward returns ``(class_outputs, box_outputs)``,
    per-level lists (P3 first) of ``[B, A*num_classes, H, W]`` and ``[B, A*4, H, W]``."""


    def __init__(self, spec: RetinaNetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = SpineNet(spec.backbone)
        self.class_net = self._head(spec.num_classes, class_prior_bias())
        self.box_net = self._head(4, 0.0)

    def _head(self, outputs: int, prior_bias: float) -> HeadNet:
        s = self.spec
        head = HeadNet(s.head_filters, s.backbone.num_levels, s.head_convs, s.anchors.num_anchors, outputs,
                       act=s.act, separable=s.separable, padding=s.padding, redundant_bias=s.redundant_bias,
                       bn_eps=s.bn_eps, bn_momentum=s.bn_momentum, prior_bias=prior_bias)
        width_in = s.backbone.endpoints_num_filters
        if width_in != s.head_filters:  # the first conv changes the width, as the TF head's does
            conv_cls = SeparableConv2d if s.separable else ConvNormAct
            first = conv_cls(width_in, s.head_filters, 3, padding=s.padding, bias=s.redundant_bias, norm=False)
            for m in first.modules():
                if isinstance(m, nn.Conv2d):
                    variance_scaling_(m.weight, m.groups)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            head.conv_rep[0] = first
        return head

    def _class_head(self, num_classes: int) -> HeadNet:
        return self._head(num_classes, class_prior_bias())

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = self.backbone(x)
        return self.class_net(features), self.box_net(features)


class Variant(NamedTuple):
    """One RetinaNet-SpineNet zoo model."""

    backbone: str  # SpineNet model id
    mobile: bool
    resolution: int
    head_convs: int
    anchor_size: float


# Input size and head from the SpineNet RetinaNet configs: tensorflow/tpu
# configs/spinenet/spinenet{49S,49,96,143,190}_retinanet.yaml and spinenet49_mbconv_retinanet.yaml,
# tensorflow/models retinanet/coco_spinenet49{,s,xs}_mobile_tpu.yaml. Anchor size: those configs
# set 3.0 for 49S, 49, 96 and the mobile models; 143 and 190 keep
# the default 4. Head width = endpoints_num_filters; the mobile heads are separable.
RETINANET_VARIANTS: dict[str, Variant] = {
    "spinenet49s": Variant("49S", False, 640, 4, 3.0),
    "spinenet49": Variant("49", False, 640, 4, 3.0),
    "spinenet96": Variant("96", False, 1024, 4, 3.0),
    "spinenet143": Variant("143", False, 1280, 4, 4.0),
    "spinenet190": Variant("190", False, 1280, 7, 4.0),
    "spinenet49_mobile": Variant("49", True, 384, 4, 3.0),
    "spinenet49s_mobile": Variant("49S", True, 384, 4, 3.0),
    "spinenet49xs_mobile": Variant("49XS", True, 256, 4, 3.0),
}

# Backbone stochastic depth of the TF configs (init_drop_connect_rate / stochastic_depth_drop_rate).
DROP_PATH = 0.2


def retinanet_spec(variant: str, num_classes: int = 90) -> RetinaNetSpec:
    """The spec of RetinaNet-``variant`` (a ``RETINANET_VARIANTS`` key, e.g. 'spinenet49s')."""
    if variant not in RETINANET_VARIANTS:
        raise SpecError(f"unknown RetinaNet variant {variant!r}; use one of {sorted(RETINANET_VARIANTS)}")
    v = RETINANET_VARIANTS[variant]
    backbone = (spinenet_mobile_spec if v.mobile else spinenet_spec)(v.backbone, drop_path=DROP_PATH)
    return RetinaNetSpec(
        backbone=backbone, head_convs=v.head_convs, head_filters=backbone.endpoints_num_filters,
        separable=v.mobile,
        anchors=AnchorSpec(aspect_ratios=RETINANET_ASPECT_RATIOS, anchor_scale=v.anchor_size),
        num_classes=num_classes, resolution=v.resolution,
    )


# The zoo entries of this family, collected by effml.zoo.
ENTRIES = tuple(
    ModelEntry(
        name=f"{name}_retinanet", family="spinenet_mobile" if v.mobile else "spinenet",
        spec_fn=partial(retinanet_spec, name),
        preprocess=Preprocess(v.resolution, 1.0, IMAGENET_MEAN, IMAGENET_STD, interpolation="bilinear"),
        task="detect",
    )
    for name, v in RETINANET_VARIANTS.items()
)
