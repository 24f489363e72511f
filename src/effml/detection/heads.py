"""EfficientDet's class and box heads (google/automl ``efficientdet_keras.py``): separable convs shared by
every pyramid level, one BN per level per repeat, then a prediction conv whose output is
anchor-major (``[A, K]`` per location)."""

from __future__ import annotations

import math

import torch
from torch import nn

from effml.layers.init import glorot_uniform_, init_convs_, variance_scaling_
from effml.layers.norm import BatchNormAct2d
from effml.layers.separable import ConvNormAct, SeparableConv2d

PRIOR_PROBABILITY = 0.01  # class bias -log((1 - pi) / pi) = -4.595 (RetinaNet, arXiv 1708.02002 sec. 4.1)


class LevelNorm(nn.Module):
    """The BN (+ activation) of one pyramid level; wrapped so keys read ``bn_rep.<r>.<l>.bn.*`` as effdet's.
    Its conv is shared by every level, so ``fuse_for_inference`` leaves this BN as it is."""

    follows_shared_conv = True

    def __init__(self, channels: int, act: str, bn_eps: float, bn_momentum: float) -> None:
        super().__init__()
        self.bn = BatchNormAct2d(channels, act, bn_eps, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


class HeadNet(nn.Module):
    """``repeats`` x (shared conv -> per-level BN -> act), then a shared prediction conv with
    ``num_anchors * outputs_per_anchor`` channels."""

    def __init__(self, width: int, num_levels: int, repeats: int, num_anchors: int, outputs_per_anchor: int,
                 *, act: str, separable: bool = True, padding: str = "", redundant_bias: bool = False,
                 bn_eps: float = 1e-3, bn_momentum: float = 0.01, prior_bias: float = 0.0) -> None:
        super().__init__()
        conv_cls = SeparableConv2d if separable else ConvNormAct
        self.conv_rep = nn.ModuleList([
            conv_cls(width, width, 3, padding=padding, bias=redundant_bias, norm=False) for _ in range(repeats)
        ])
        self.bn_rep = nn.ModuleList([
            nn.ModuleList([LevelNorm(width, act, bn_eps, bn_momentum) for _ in range(num_levels)])
            for _ in range(repeats)
        ])
        self.predict = conv_cls(width, num_anchors * outputs_per_anchor, 3, padding=padding, bias=True, norm=False)
        self.outputs_per_anchor = outputs_per_anchor
        init_head(self, prior_bias)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for level, x in enumerate(features):
            for conv, norms in zip(self.conv_rep, self.bn_rep):
                x = norms[level](conv(x))
            outputs.append(self.predict(x))
        return outputs


def class_prior_bias(prior: float = PRIOR_PROBABILITY) -> float:
    """The class-logit bias whose sigmoid is ``prior`` at initialisation."""
    return -math.log((1 - prior) / prior)


def init_head(head: HeadNet, prior_bias: float) -> None:
    """Heads: variance-scaling weights, zero bias, ``prior_bias`` on the prediction conv."""
    init_convs_(head, variance_scaling_)
    pw = head.predict.conv_pw if isinstance(head.predict, SeparableConv2d) else head.predict.conv
    nn.init.constant_(pw.bias, prior_bias)


def init_neck(module: nn.Module) -> None:
    """BiFPN and resampling convs: TF's glorot-uniform weights, zero bias; BN weight 1, bias 0."""
    init_convs_(module, glorot_uniform_)
