"""Fold every BatchNorm into the convolution before it, for inference.

The conv -> BN pairs are read from explicit tables (and ``nn.Sequential``, where order is data
flow), never guessed from attribute order of unknown modules: each block kind declares its pairs
in the builder's ``BLOCK_MODULES``; the networks and the detection/SpineNet modules below.
It sits with the models, not in ``effml.deploy``, because a search scores supernet children
faster folded (``effml.search.study.supernet_proxy``), and search is below deploy.
"""

from __future__ import annotations

import copy
import warnings

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

from effml.layers import BatchNormAct2d, MixConv2d
from effml.layers.resnet_blocks import BasicBlock, Bottleneck
from effml.layers.separable import ConvNormAct, SeparableConv2d
from effml.models.builder import BLOCK_MODULES
from effml.models.network import EfficientNet, EfficientNetFeatures

# (conv attribute, BN attribute) in forward order, by module class: the block kinds' pairs as the
# builder declares them, then the networks' stem/head and the detection and ResNet units.
FUSE_PAIRS: dict[type[nn.Module], tuple[tuple[str, str], ...]] = {
    **{kind.cls: kind.fuse_pairs for kind in BLOCK_MODULES.values()},
    EfficientNet: (("conv_stem", "bn1"), ("conv_head", "bn2")),
    EfficientNetFeatures: (("conv_stem", "bn1"),),
    ConvNormAct: (("conv", "bn"),),
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    SeparableConv2d: (("conv_pw", "bn"),),
}
# BatchNorms that follow a conv shared by several inputs (EfficientDet's heads: one conv, one BN
# per pyramid level) cannot fold into it; they stay, by design. Such a module says so with a class
# attribute ``follows_shared_conv = True`` and holds the BN as ``.bn`` (the detection layer's
# ``LevelNorm``, above this one).
SHARED_CONV_MARK = "follows_shared_conv"


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into its conv (BN -> its activation)."""
    fused = copy.deepcopy(model).eval()
    count = 0
    for module in list(fused.modules()):
        for conv_name, bn_name in _pairs(module):
            conv, bn = getattr(module, conv_name), getattr(module, bn_name)
            if not _foldable(conv, bn):
                continue
            setattr(module, conv_name, fold_conv_bn(conv, bn))
            act = bn.act if isinstance(bn, BatchNormAct2d) else nn.Identity()
            setattr(module, bn_name, act)
            count += 1
    shared = {id(m.bn) for m in fused.modules() if getattr(type(m), SHARED_CONV_MARK, False)}
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in shared for m in fused.modules())
    if left:
        warnings.warn(f"fuse_for_inference folded {count} BatchNorms but left {left} it does not "
                      f"know the conv of; they still run as BatchNorm", stacklevel=2)
    return fused


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    pairs = FUSE_PAIRS.get(type(module))
    if pairs is not None:
        return list(pairs)
    if isinstance(module, nn.Sequential):
        names = [n for n, _ in module.named_children()]
        return list(zip(names, names[1:]))
    return []


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
        return False
    if isinstance(conv, MixConv2d):
        return all(isinstance(c, nn.Conv2d) for c in conv.values())
    return isinstance(conv, nn.Conv2d)


def fold_conv_bn(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    """A conv (same class, ``Conv2dSame`` or ``MixConv2d`` included) computing ``bn(conv(x))`` in eval."""
    if isinstance(conv, MixConv2d):
        # The BN channels split as the MixConv outputs do: fold each part into its own conv.
        folded = copy.deepcopy(conv)
        start = 0
        for sub in folded.values():
            part = slice(start, start + sub.out_channels)
            _fold_into(sub, bn, part)
            start += sub.out_channels
        return folded
    return fuse_conv_bn_eval(conv.eval(), bn.eval())


def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d, part: slice) -> None:
    assert bn.running_mean is not None and bn.running_var is not None  # checked by _foldable
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean[part], bn.running_var[part], bn.eps,
        None if bn.weight is None else bn.weight[part], None if bn.bias is None else bn.bias[part],
    )
