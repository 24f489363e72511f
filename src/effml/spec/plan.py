"""The layer plan: a ``NetworkSpec`` resolved, before any module exists, into one record per built
layer with its widths, stride, spatial sizes, convolutions and multiply-accumulates.

The builder (models/builder.py) makes each block from its ``LayerPlan``; a latency table costs the
plan; a supernet slices it. Every width here is computed by the same functions the modules call
(spec/channels.py), so the plan and the built network agree by construction (tests/test_plan.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from effml.errors import SpecError
from effml.spec.blocks import BlockSpec, NetworkSpec
from effml.spec.channels import expanded_channels, scale_filters, se_reduced_channels, split_channels

Size = tuple[int, int]


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Output length of a conv along one axis, in the network's padding flavour.

    TF 'SAME' gives ``ceil(size / stride)`` whatever the kernel; PyTorch symmetric padding
    ``p = ((stride - 1) + (kernel - 1)) // 2`` (timm ``get_padding``) gives the usual
    ``(size + 2p - kernel) // stride + 1``.
    """
    if padding == "same":
        return math.ceil(size / stride)
    pad = ((stride - 1) + (kernel - 1)) // 2
    return (size + 2 * pad - kernel) // stride + 1


@dataclass(frozen=True)
class ConvPlan:
    """One convolution: widths, kernel(s), stride, depthwise or full, input and output size.

    Several kernel sizes make a MixConv: both widths split as ``split_channels`` does, one kernel
    per channel group (MixNet's grouped 1x1s are MixConvs of 1x1 kernels). A dense layer is a 1x1
    conv on a 1x1 map (the classifier, the SE's two 1x1s on the pooled map).
    """

    name: str  # the module's attribute path inside its block or network
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: int
    input_size: Size
    output_size: Size
    depthwise: bool = False

    def macs(self) -> int:
        """Multiply-accumulates for a batch of one: out_h * out_w * out_c * (in_c / groups) * k * k,
        summed over the MixConv groups (as ``torch.utils.flop_counter`` counts convs, halved)."""
        groups = len(self.kernel_size)
        ins = split_channels(self.in_channels, groups)
        outs = split_channels(self.out_channels, groups)
        area = self.output_size[0] * self.output_size[1]
        return sum(area * o * (1 if self.depthwise else i) * k * k
                   for k, i, o in zip(self.kernel_size, ins, outs))


@dataclass(frozen=True)
class FeatureInfo:
    """One feature tap: the stage it follows, its channels and its stride (reduction)."""

    stage: int
    channels: int
    reduction: int


@dataclass(frozen=True)
class LayerPlan:
    """One built block (repeats expanded): where it sits and every width, size and conv it has.

    ``mid_channels`` are the inner widths: ``(in * e,)`` for MBConv and FusedMBConv, ``(in,)`` for
    the depthwise-separable block, the ``(input rank, output rank)`` of a TuckerConv's core.
    ``se_channels`` is the SE's reduced width (0: no SE); ``residual`` is true exactly when the
    module adds the shortcut.
    """

    index: int  # among all blocks of the network: the drop-path schedule's i
    stage: int
    row: int  # the block row within the stage
    repeat: int  # which repeat of the row (only repeat 0 has the row's stride)
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: int
    input_size: Size
    output_size: Size
    mid_channels: tuple[int, ...]
    se_channels: int
    drop_path_rate: float
    residual: bool
    act: str
    convs: tuple[ConvPlan, ...] = field(repr=False)
    block: BlockSpec = field(repr=False)  # the row: the ratios and groups its module takes

    def macs(self) -> int:
        """Multiply-accumulates of this block for a batch of one."""
        return sum(c.macs() for c in self.convs)


@dataclass(frozen=True)
class NetworkPlan:
    """A whole network: the stem conv, the blocks, the 1x1 head conv, the classifier, the taps."""

    input_size: Size
    stem: ConvPlan  # 3x3 stride-2 conv, in_channels -> stem_channels
    layers: tuple[LayerPlan, ...]
    head: ConvPlan  # 1x1 conv, last block width -> head_channels
    classifier: ConvPlan | None  # head_channels -> num_classes on the pooled map; None when 0
    features: tuple[FeatureInfo, ...]  # the taps: each stage before a stride change, and the last
    spec: NetworkSpec = field(repr=False)

    def stage(self, index: int) -> tuple[LayerPlan, ...]:
        """The blocks of one stage."""
        return tuple(layer for layer in self.layers if layer.stage == index)

    def convs(self) -> Iterator[ConvPlan]:
        """Every convolution and dense layer, in forward order."""
        yield self.stem
        for layer in self.layers:
            yield from layer.convs
        yield self.head
        if self.classifier is not None:
            yield self.classifier

    def macs(self) -> int:
        """Multiply-accumulates of one forward pass for a batch of one (what papers call FLOPs)."""
        return sum(c.macs() for c in self.convs())


def _conv(name: str, cin: int, cout: int, kernels: tuple[int, ...], stride: int, size: Size,
          padding: str, depthwise: bool = False) -> ConvPlan:
    outs = {(conv_output_size(size[0], k, stride, padding), conv_output_size(size[1], k, stride, padding))
            for k in kernels}
    if len(outs) > 1:
        raise SpecError(f"MixConv kernels {kernels} give different output sizes {sorted(outs)} at input "
                        f"{size} with symmetric padding; use odd kernel sizes or padding='same'")
    return ConvPlan(name, cin, cout, kernels, stride, size, outs.pop(), depthwise)


def _pointwise(name: str, cin: int, cout: int, groups: int, size: Size) -> ConvPlan:
    return ConvPlan(name, cin, cout, (1,) * groups, 1, size, size)


def _se(channels: int, reduced: int) -> list[ConvPlan]:
    if not reduced:
        return []
    return [_pointwise("se.conv_reduce", channels, reduced, 1, (1, 1)),
            _pointwise("se.conv_expand", reduced, channels, 1, (1, 1))]


def _se_width(b: BlockSpec, cin: int) -> int:
    return se_reduced_channels(cin, b.se_ratio) if b.se_ratio > 0 else 0


# What a block kind resolves to: (mid widths, SE width, convs in forward order).
Resolved = tuple[tuple[int, ...], int, list[ConvPlan]]


def _depthwise_separable(b: BlockSpec, cin: int, stride: int, size: Size, pad: str) -> Resolved:
    dw = _conv("conv_dw", cin, cin, b.kernel_size, stride, size, pad, depthwise=True)
    se = _se_width(b, cin)
    pw = _pointwise("conv_pw", cin, b.out_channels, b.proj_groups, dw.output_size)
    return (cin,), se, [dw, *_se(cin, se), pw]


def _mbconv(b: BlockSpec, cin: int, stride: int, size: Size, pad: str) -> Resolved:
    mid = expanded_channels(cin, b.expand_ratio)
    pw = _pointwise("conv_pw", cin, mid, b.exp_groups, size)
    dw = _conv("conv_dw", mid, mid, b.kernel_size, stride, size, pad, depthwise=True)
    se = _se_width(b, cin)
    pwl = _pointwise("conv_pwl", mid, b.out_channels, b.proj_groups, dw.output_size)
    return (mid,), se, [pw, dw, *_se(mid, se), pwl]


def _fused_mbconv(b: BlockSpec, cin: int, stride: int, size: Size, pad: str) -> Resolved:
    mid = expanded_channels(cin, b.expand_ratio)
    exp = _conv("conv_exp", cin, mid, b.kernel_size, stride, size, pad)
    se = _se_width(b, cin)
    pwl = _pointwise("conv_pwl", mid, b.out_channels, 1, exp.output_size)
    return (mid,), se, [exp, *_se(mid, se), pwl]


def _tucker(b: BlockSpec, cin: int, stride: int, size: Size, pad: str) -> Resolved:
    in_rank = scale_filters(cin, b.input_compression)
    out_rank = scale_filters(b.out_channels, b.output_compression)
    pw = _pointwise("conv_pw", cin, in_rank, 1, size)
    core = _conv("conv_core", in_rank, out_rank, b.kernel_size, stride, size, pad)
    pwl = _pointwise("conv_pwl", out_rank, b.out_channels, 1, core.output_size)
    return (in_rank, out_rank), 0, [pw, core, pwl]


# Per block kind (the keys of ``BLOCK_KINDS``): (row, in channels, stride, input size, padding) ->
# what its module builds, mirroring the constructors in layers/mbconv.py, fused_mbconv.py, tucker.py.
RESOLVE: dict[str, Callable[[BlockSpec, int, int, Size, str], Resolved]] = {
    "ds": _depthwise_separable, "ir": _mbconv, "er": _fused_mbconv, "tucker": _tucker,
}


def _as_size(input_size: int | tuple[int, int]) -> Size:
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise SpecError(f"input_size must be a positive int or (height, width), got {input_size!r}")
    return size  # type: ignore[return-value]


def plan(spec: NetworkSpec, input_size: int | tuple[int, int] | None = None) -> NetworkPlan:
    """Resolve a spec at an input size (default: ``spec.resolution``) into its layer plan."""
    if not isinstance(spec, NetworkSpec):
        raise SpecError(f"plan() takes a NetworkSpec (an MBConv-family network), got {type(spec).__name__}")
    size = _as_size(spec.resolution if input_size is None else input_size)
    stem = _conv("conv_stem", spec.in_channels, spec.stem_channels, (3,), 2, size, spec.padding)
    size, cin, reduction, index = stem.output_size, spec.stem_channels, 2, 0
    layers: list[LayerPlan] = []
    features: list[FeatureInfo] = []
    for s, stage in enumerate(spec.stages):
        for r, b in enumerate(stage):
            for k in range(b.repeats):
                stride = b.stride if k == 0 else 1
                mid, se, convs = RESOLVE[b.kind](b, cin, stride, size, spec.padding)
                out_size = convs[-1].output_size
                layers.append(LayerPlan(
                    index=index, stage=s, row=r, repeat=k, kind=b.kind, in_channels=cin,
                    out_channels=b.out_channels, kernel_size=b.kernel_size, stride=stride,
                    input_size=size, output_size=out_size, mid_channels=mid, se_channels=se,
                    # the linear stochastic-depth schedule, rate * i / n (TF ``survival_prob``)
                    drop_path_rate=spec.drop_path * index / spec.num_blocks,
                    residual=b.skip and stride == 1 and cin == b.out_channels,
                    act=b.act or spec.act, convs=tuple(convs), block=b,
                ))
                size, cin, reduction, index = out_size, b.out_channels, reduction * stride, index + 1
        # a tap follows the last stage before each stride change and the last stage (timm's
        # ``feature_info``), so tap 0 is stride 2 and tap 4 stride 32 for the zoo models
        next_stride = spec.stages[s + 1][0].stride if s + 1 < len(spec.stages) else 2
        if next_stride > 1:
            features.append(FeatureInfo(stage=s, channels=cin, reduction=reduction))
    head = _pointwise("conv_head", cin, spec.head_channels, 1, size)
    classifier = (_pointwise("classifier", spec.head_channels, spec.num_classes, 1, (1, 1))
                  if spec.num_classes > 0 else None)
    return NetworkPlan(size, stem, tuple(layers), head, classifier, tuple(features), spec)
