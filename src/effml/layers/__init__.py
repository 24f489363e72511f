"""Layers of the MBConv family: padding, MixConv, SE, drop path, norms, activations, blocks."""

from effml.layers.activations import create_act
from effml.layers.aux_bn import DualBatchNormAct2d, convert_to_advprop, strip_aux_bn, use_aux_bn
from effml.layers.conv import create_conv2d
from effml.layers.drop_path import DropPath, drop_path, drop_path_rates
from effml.layers.mbconv import DepthwiseSeparableConv, MBConv
from effml.layers.mixconv import MixConv2d
from effml.layers.norm import BatchNormAct2d
from effml.layers.padding import Conv2dSame, same_output_size, same_pad_1d
from effml.layers.squeeze_excite import SqueezeExcite
from effml.layers.fused_mbconv import FusedMBConv
from effml.layers.tucker import TuckerConv
# pure channel arithmetic lives in spec/ (the layer plan needs it); re-exported for the families
from effml.spec.channels import scale_filters, se_reduced_channels, split_channels

__all__ = [
    "BatchNormAct2d", "Conv2dSame", "DepthwiseSeparableConv", "DropPath", "MBConv", "MixConv2d",
    "SqueezeExcite", "create_act", "create_conv2d", "drop_path", "drop_path_rates",
    "same_output_size", "same_pad_1d", "se_reduced_channels", "split_channels",
    "DualBatchNormAct2d", "convert_to_advprop", "strip_aux_bn", "use_aux_bn",
    "FusedMBConv", "TuckerConv", "scale_filters",
]
