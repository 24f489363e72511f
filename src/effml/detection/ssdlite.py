"""SSDLite (Sandler et al., MobileNetV2, CVPR 2018) on MobileDet backbones: the detectors of the
MobileDets paper, registered as ``ssdlite_mobiledet_{cpu,dsp,edgetpu,gpu}`` at 320 px.

From the TF configs ``ssdlite_mobiledet_*_320x320_coco_sync_4x4.config`` (tensorflow/models
research/object_detection/samples/configs): backbone endpoints C4 (stride 16) and C5 (stride 32),
then four extra maps, each a 1x1 conv to depth/2 and a 3x3/2 depthwise-separable conv to depth
(512, 256, 256, 128); every conv there has BN + ReLU6. Per map, a box and a class predictor, each a 3x3 depthwise conv (+ BN + ReLU6)
then a 1x1 conv with bias (class bias -4.6). SSD anchors (3 on the first map, 6 elsewhere), the
Faster R-CNN coder with scales (10, 10, 5, 5), sigmoid scores over 90 classes. The forward returns
per-map lists of ``[B, A*num_classes, H, W]`` and ``[B, A*4, H, W]``, anchor-major, first map
first; anchors, labelling, losses and NMS are the shared ones.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from effml.detection.box_coder import BoxCoder
from effml.detection.detector import Detector
from effml.detection.mobiledet import MOBILEDET_TABLES, mobiledet_spec
from effml.detection.ssd_anchors import SSDAnchorSpec, generate_ssd_anchors
from effml.errors import SpecError
from effml.layers import BatchNormAct2d, create_conv2d
from effml.models.network import EfficientNetFeatures
from effml.spec.entry import ADVPROP_MEAN, ADVPROP_STD, ModelEntry, Preprocess
from effml.spec import ComposedSpec, NetworkSpec

# SSD feature-map depths after the backbone maps (feature_map_layout layer_depth 512, 256, 256, 128).
EXTRA_DEPTHS = (512, 256, 256, 128)
MIN_DEPTH = 16  # feature extractor min_depth: floor of the extra depths under a width multiplier


@dataclass(frozen=True)
class SSDLiteSpec(ComposedSpec):
    """SSDLite: backbone taps -> extra maps -> per-map depthwise-separable box and class predictors."""

    backbone: NetworkSpec
    backbone_indices: tuple[int, ...] = (3, 4)  # taps C4 (stride 16) and C5 (stride 32)
    extra_depths: tuple[int, ...] = EXTRA_DEPTHS
    anchors: SSDAnchorSpec = field(default_factory=SSDAnchorSpec)
    num_classes: int = 90
    resolution: int = 320
    act: str = "relu6"  # extra maps and predictors (the configs' conv_hyperparams)
    box_scale_factors: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    class_bias: float = -4.6  # class_prediction_bias_init: sigmoid(-4.6) ~ 0.01
    bn_eps: float = 1e-3  # extras and predictors: BN decay 0.97, epsilon 1e-3
    bn_momentum: float = 0.03

    def __post_init__(self) -> None:
        object.__setattr__(self, "backbone_indices", tuple(self.backbone_indices))
        object.__setattr__(self, "extra_depths", tuple(self.extra_depths))
        object.__setattr__(self, "box_scale_factors", tuple(float(f) for f in self.box_scale_factors))
        maps = len(self.backbone_indices) + len(self.extra_depths)
        if maps != self.anchors.num_layers:
            raise SpecError(
                f"SSDLite spec: {len(self.backbone_indices)} backbone maps + {len(self.extra_depths)} extra "
                f"maps = {maps}, but the anchors have num_layers={self.anchors.num_layers}")
        if not self.backbone_indices or list(self.backbone_indices) != sorted(set(self.backbone_indices)):
            raise SpecError(f"SSDLite spec: backbone_indices {self.backbone_indices} must be increasing taps")
        if any(d < 2 for d in self.extra_depths):
            raise SpecError(f"SSDLite spec: extra_depths {self.extra_depths} must be >= 2 (a 1x1 to depth/2 "
                            f"precedes each)")
        if self.num_classes < 1:
            raise SpecError(f"SSDLite spec: num_classes must be >= 1, got {self.num_classes}")
        if self.resolution < 1:
            raise SpecError(f"SSDLite spec: resolution must be >= 1, got {self.resolution}")

    @property
    def strides(self) -> list[int]:
        """Stride of each feature map: the backbone taps (2**(i+1)), then each extra halves."""
        taps = [2 ** (i + 1) for i in self.backbone_indices]
        return taps + [taps[-1] * 2 ** (j + 1) for j in range(len(self.extra_depths))]

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of every map for an input of this size (each stride-2 conv rounds up)."""
        sizes = []
        for stride in self.strides:
            h, w = height, width
            for _ in range(int(math.log2(stride))):
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            sizes.append((h, w))
        return sizes



def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, *,
                depthwise: bool = False, act: str | None, bn_eps: float, bn_momentum: float,
                padding: str = "") -> nn.Sequential:
    """conv (no bias) -> BN -> act, as ``conv`` / ``bn`` children (BN folding reads Sequentials)."""
    return nn.Sequential(OrderedDict(
        conv=create_conv2d(in_channels, out_channels, kernel_size, stride, depthwise=depthwise, padding=padding),
        bn=BatchNormAct2d(out_channels, act, bn_eps, bn_momentum),
    ))


class SSDExtraLayer(nn.Module):
    """One extra SSD map: 1x1 to depth/2, 3x3/2 depthwise, 1x1 to depth (``insert_1x1_conv``)."""

    def __init__(self, in_channels: int, depth: int, **bn_act: Any) -> None:
        super().__init__()
        self.conv_reduce = conv_bn_act(in_channels, depth // 2, 1, **bn_act)
        self.conv_dw = conv_bn_act(depth // 2, depth // 2, 3, 2, depthwise=True, **bn_act)
        self.conv_pw = conv_bn_act(depth // 2, depth, 1, **bn_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_pw(self.conv_dw(self.conv_reduce(x)))


class SSDLitePredictor(nn.Module):
    """Per map (weights not shared): 3x3 depthwise + BN + act, then a 1x1 conv with bias to
    ``anchors * outputs_per_anchor`` channels (TF ``ConvolutionalBoxPredictor``, use_depthwise)."""

    def __init__(self, channels: list[int], num_anchors: list[int], outputs_per_anchor: int, *,
                 prior_bias: float = 0.0, **bn_act: Any) -> None:
        super().__init__()
        self.conv_dw = nn.ModuleList([conv_bn_act(c, c, 3, depthwise=True, **bn_act) for c in channels])
        self.predict = nn.ModuleList([nn.Conv2d(c, a * outputs_per_anchor, 1, bias=True)
                                      for c, a in zip(channels, num_anchors)])
        self.outputs_per_anchor = outputs_per_anchor
        init_ssd_layers(self)
        for conv in self.predict:
            nn.init.constant_(conv.bias, prior_bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [predict(dw(x)) for x, dw, predict in zip(features, self.conv_dw, self.predict)]


def init_ssd_layers(module: nn.Module) -> None:
    """Extras and predictors: truncated normal std 0.03 (the configs' initializer), zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.03, a=-0.06, b=0.06)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_backbone_he(module: nn.Module) -> None:
    """MobileDet backbone: He normal on fan-in for every conv; for a depthwise kernel the fan-in
    is k*k, the reference's depthwise variant of He init (TF ``ssd_mobiledet_feature_extractor.py``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SSDLite(Detector):
    """Backbone (C4, C5) -> extra maps -> (class_net, box_net); forward returns
    ``(class_outputs, box_outputs)``, per-map lists, first (stride 16) map first."""


    def __init__(self, spec: SSDLiteSpec) -> None:
        super().__init__()
        self.spec = spec
        self.box_coder = BoxCoder(spec.box_scale_factors)
        self.backbone = EfficientNetFeatures(spec.backbone.replace(resolution=spec.resolution),
                                             spec.backbone_indices)
        init_backbone_he(self.backbone)
        taps = spec.strides[:len(spec.backbone_indices)]
        if self.backbone.strides != taps:
            raise SpecError(f"SSDLite: backbone taps {spec.backbone_indices} have strides {self.backbone.strides}, "
                            f"expected {taps}; start a new backbone stage at every stride-2 block")
        bn_act = self._bn_act()
        channels = list(self.backbone.channels)
        extras = []
        for depth in spec.extra_depths:
            extras.append(SSDExtraLayer(channels[-1], depth, **bn_act))
            channels.append(depth)
        self.extras = nn.ModuleList(extras)
        init_ssd_layers(self.extras)
        self.channels = channels
        self.box_net = SSDLitePredictor(channels, spec.anchors.num_anchors(), 4, **bn_act)
        self.class_net = self._class_head(spec.num_classes)

    def _bn_act(self) -> dict[str, Any]:
        s = self.spec
        return dict(act=s.act, bn_eps=s.bn_eps, bn_momentum=s.bn_momentum, padding=s.backbone.padding)

    def _class_head(self, num_classes: int) -> SSDLitePredictor:
        return SSDLitePredictor(self.channels, self.spec.anchors.num_anchors(), num_classes,
                                prior_bias=self.spec.class_bias, **self._bn_act())

    def anchors(self, height: int, width: int) -> torch.Tensor:
        """The ``[N, 4]`` xyxy anchors of an input of this size, in the predictors' output order."""
        return generate_ssd_anchors(self.spec.anchors, (height, width), self.spec.feature_sizes(height, width))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = self.backbone(x)
        y = features[-1]
        for layer in self.extras:
            y = layer(y)
            features.append(y)
        return self.class_net(features), self.box_net(features)


def ssdlite_mobiledet_spec(variant: str, multiplier: float = 1.0, num_classes: int = 90,
                           resolution: int = 320) -> SSDLiteSpec:
    """SSDLite on MobileDet-``variant``; ``multiplier`` scales the backbone and the extra maps
    (the configs' ``depth_multiplier``, extra depths floored at ``min_depth`` 16)."""
    return SSDLiteSpec(
        backbone=mobiledet_spec(variant, multiplier, resolution),
        extra_depths=tuple(max(int(d * multiplier), MIN_DEPTH) for d in EXTRA_DEPTHS),
        num_classes=num_classes,
        resolution=resolution,
    )


# The zoo entries of this family, collected by effml.zoo.
ENTRIES = tuple(
    ModelEntry(
        name=f"ssdlite_mobiledet_{variant}", family="ssdlite_mobiledet",
        spec_fn=partial(ssdlite_mobiledet_spec, variant),
        # pixels -> 2x/255 - 1 (the configs' preprocessing), fixed 320x320 input
        preprocess=Preprocess(320, 1.0, ADVPROP_MEAN, ADVPROP_STD, interpolation="bilinear"),
        task="detect",
    )
    for variant in MOBILEDET_TABLES
)
