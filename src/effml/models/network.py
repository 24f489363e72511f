"""The MBConv-family network (EfficientNet, EfficientNet-Lite, MixNet): classifier and backbone."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from effml.errors import SpecError
from effml.layers import BatchNormAct2d
from effml.layers.init import init_weights_tf
from effml.models.builder import build_blocks, build_conv
from effml.spec import NetworkSpec
from effml.spec.plan import FeatureInfo, plan


class EfficientNet(nn.Module):
    """Stem -> stages -> 1x1 head -> global average pool -> dropout -> classifier.

    Module names follow timm (``conv_stem, bn1, blocks, conv_head, bn2, classifier``).
    """

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        net = plan(spec)
        self.conv_stem = build_conv(net.stem, spec.padding)
        self.bn1 = BatchNormAct2d(spec.stem_channels, spec.act, spec.bn_eps, spec.bn_momentum)
        self.blocks = build_blocks(net)
        self.feature_info = list(net.features)
        self.conv_head = build_conv(net.head, spec.padding)
        self.bn2 = BatchNormAct2d(spec.head_channels, spec.act, spec.bn_eps, spec.bn_momentum)
        self.num_features = spec.head_channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = self._classifier(spec.num_classes)
        init_weights_tf(self)

    def _classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @property
    def num_classes(self) -> int:
        """Number of output classes (0 when the classifier is removed)."""
        return self.classifier.out_features if isinstance(self.classifier, nn.Linear) else 0

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes``."""
        self.classifier = self._classifier(num_classes)
        init_weights_tf(self.classifier)
        self.spec = self.spec.replace(num_classes=num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The head feature map (after ``conv_head``/``bn2``), before pooling."""
        x = self.bn1(self.conv_stem(x))
        x = self.blocks(x)
        return self.bn2(self.conv_head(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and classify a feature map."""
        x = self.global_pool(x).flatten(1)
        if pre_logits:
            return x
        x = F.dropout(x, self.spec.dropout, self.training)
        return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class EfficientNetFeatures(nn.Module):
    """The same stem and stages as a backbone: returns feature maps at the requested taps.

    Tap index i has stride 2**(i+1) (0: stride 2 ... 4: stride 32). Detection necks read
    ``feature_info`` for channels and strides.
    """

    def __init__(self, spec: NetworkSpec, out_indices: Sequence[int] = (1, 2, 3, 4)) -> None:
        super().__init__()
        self.spec = spec
        net = plan(spec)
        self.conv_stem = build_conv(net.stem, spec.padding)
        self.bn1 = BatchNormAct2d(spec.stem_channels, spec.act, spec.bn_eps, spec.bn_momentum)
        self.blocks = build_blocks(net)
        taps = net.features
        bad = [i for i in out_indices if not 0 <= i < len(taps)]
        if bad or not out_indices:
            raise SpecError(
                f"out_indices {tuple(out_indices)} invalid: this network has taps 0..{len(taps) - 1} "
                f"(strides {[t.reduction for t in taps]})"
            )
        self.out_indices = tuple(out_indices)
        self.feature_info: list[FeatureInfo] = [taps[i] for i in self.out_indices]
        self._tap_stages = {taps[i].stage for i in self.out_indices}
        self._last_stage = max(self._tap_stages)
        init_weights_tf(self)

    @property
    def channels(self) -> list[int]:
        """Channels of each returned feature map."""
        return [f.channels for f in self.feature_info]

    @property
    def strides(self) -> list[int]:
        """Stride (reduction) of each returned feature map."""
        return [f.reduction for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.bn1(self.conv_stem(x))
        out = []
        for s, stage in enumerate(self.blocks):
            x = stage(x)
            if s in self._tap_stages:
                out.append(x)
            if s == self._last_stage:  # later stages feed no requested tap
                break
        return out
