"""Typed, immutable records that describe one block row and a whole network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from effml.errors import SpecError
from effml.spec.composite import replace_fields


@dataclass(frozen=True)
class BlockKind:
    """The spec-level rules of one block kind: its paper name and which fields it takes."""

    name: str  # the paper's name, which is also the module class name
    mixconv: bool = True  # several depthwise kernels (MixConv) and grouped 1x1s allowed
    expansion: bool = True  # takes ``expand_ratio`` (the ``e`` token)
    se: bool = True  # may carry a squeeze-excite
    compression: bool = False  # takes the Tucker ranks' ``input/output_compression`` (``ri``/``ro``)


# Block kinds, by the papers' names; the short codes are timm's / the TF reference's block notation.
# Only the spec-level rules live here: the module each kind builds and its BN-fusion pairs are in
# the one table of models/builder.py (``BLOCK_MODULES``), because layers sit above spec, and the
# widths each kind resolves to are in spec/plan.py.
BLOCK_KINDS: dict[str, BlockKind] = {
    # MobileNet-V1 style dw -> [SE] -> pw (EfficientNet stage 1, e == 1)
    "ds": BlockKind("DepthwiseSeparableConv"),
    "ir": BlockKind("MBConv"),  # inverted residual bottleneck (MnasNet / EfficientNet MBConv)
    # MobileDets (Xiong et al., CVPR 2021) "fused IBN": a full kxk conv expands, [SE], 1x1 projects;
    # timm's EdgeResidual, written ``er`` in its notation (EfficientNet-EdgeTPU)
    "er": BlockKind("FusedMBConv", mixconv=False),
    # MobileDets "Tucker convolution": 1x1 compress -> full kxk -> 1x1 (generalised bottleneck)
    "tucker": BlockKind("TuckerConv", mixconv=False, expansion=False, se=False, compression=True),
}
ACTIVATIONS = ("relu", "relu6", "swish", "hard_swish", "sigmoid", "hard_sigmoid")
PADDINGS = ("", "same")


@dataclass(frozen=True)
class BlockSpec:
    """One row of an architecture table: ``repeats`` blocks of one kind.

    Only the first of the repeats has ``stride``; the others use stride 1 (EfficientNet paper,
    Table 1, and TF ``efficientnet_model.Model._build``).
    """

    kind: str
    out_channels: int
    repeats: int = 1
    kernel_size: tuple[int, ...] = (3,)  # several kernels: MixConv (one channel group each)
    stride: int = 1
    expand_ratio: float = 1.0  # MBConv / FusedMBConv; 1 for TuckerConv
    # SE width = int(se_ratio * block *input* channels) (TF EfficientNet convention). A width
    # defined on the expanded channels (MobileNetV3, MobileDets) is the same block with
    # se_ratio = width / input channels, which exceeds 1 when the expansion does.
    se_ratio: float = 0.0
    exp_groups: int = 1  # groups of the 1x1 expansion conv (MixNet 'a1.1' -> 2)
    proj_groups: int = 1  # groups of the 1x1 projection conv (MixNet 'p1.1' -> 2)
    act: str | None = None  # per-block override of the network activation
    skip: bool = True  # residual when stride 1 and in == out; False is 'noskip'
    # TuckerConv only (MobileDets; TF ``input_rank_ratio`` / ``output_rank_ratio``): the ranks of
    # the kxk core are round8(in * input_compression) -> round8(out * output_compression).
    input_compression: float = 0.25
    output_compression: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in BLOCK_KINDS:
            raise SpecError(
                f"block kind {self.kind!r} is unknown; use one of {sorted(BLOCK_KINDS)}"
            )
        if isinstance(self.kernel_size, int):
            object.__setattr__(self, "kernel_size", (self.kernel_size,))
        else:
            object.__setattr__(self, "kernel_size", tuple(self.kernel_size))
        checks = [
            (self.out_channels >= 1, "out_channels must be >= 1"),
            (self.repeats >= 1, "repeats must be >= 1"),
            (len(self.kernel_size) >= 1 and all(k >= 1 for k in self.kernel_size),
             "kernel_size needs one or more positive sizes"),
            (self.stride in (1, 2), "stride must be 1 or 2"),
            (self.expand_ratio > 0, "expand_ratio must be > 0"),
            (0.0 <= self.se_ratio <= max(1.0, self.expand_ratio),
             "se_ratio must be in [0, max(1, expand_ratio)] (an SE no wider than the channels it gates)"),
            (self.exp_groups >= 1 and self.proj_groups >= 1, "groups must be >= 1"),
            (self.act is None or self.act in ACTIVATIONS, f"act must be one of {ACTIVATIONS}"),
            (self.input_compression > 0 and self.output_compression > 0, "compressions must be > 0"),
        ]
        rules = BLOCK_KINDS[self.kind]
        if not rules.mixconv:
            checks += [
                (len(self.kernel_size) == 1, f"{self.kind!r} blocks take one kernel size (no MixConv)"),
                (self.exp_groups == 1 and self.proj_groups == 1, f"{self.kind!r} blocks have no grouped 1x1s"),
            ]
        if not rules.expansion:
            checks.append((self.expand_ratio == 1.0,
                           f"{self.kind!r} blocks have no expansion"
                           + (" (use the compressions)" if rules.compression else "")))
        if not rules.se:
            checks.append((self.se_ratio == 0.0, f"{self.kind!r} blocks have no SE"))
        if not rules.compression:
            checks.append((self.input_compression == 0.25 and self.output_compression == 0.25,
                           "input/output_compression apply to "
                           + ", ".join(repr(k) for k, r in BLOCK_KINDS.items() if r.compression)
                           + " blocks only"))
        for ok, message in checks:
            if not ok:
                raise SpecError(f"invalid block {self}: {message}")


@dataclass(frozen=True)
class NetworkSpec:
    """A whole MBConv-family network: stem, stages of block rows, head, and its conventions.

    Channel counts are final (already rounded); ``compound_scale`` makes a new spec from an old one.
    """

    stages: tuple[tuple[BlockSpec, ...], ...]
    stem_channels: int
    head_channels: int
    num_classes: int = 1000
    in_channels: int = 3
    act: str = "swish"
    resolution: int = 224  # the input size the network was designed and scaled for
    dropout: float = 0.2  # before the classifier
    drop_path: float = 0.0  # stochastic depth; block i of n gets drop_path * i / n
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1  # PyTorch convention (1 - TF decay); TF recipe uses 0.01
    padding: str = ""  # '' = PyTorch symmetric, 'same' = TF 'SAME' (the tf_* weight ports)

    def __post_init__(self) -> None:
        stages = tuple(tuple(stage) for stage in self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages or any(not s for s in stages):
            raise SpecError("a network spec needs at least one stage, each with a block row")
        if self.padding not in PADDINGS:
            raise SpecError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.act not in ACTIVATIONS:
            raise SpecError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        if not isinstance(self.resolution, int) or isinstance(self.resolution, bool) or self.resolution < 1:
            raise SpecError(f"resolution must be a positive int (input pixels), got {self.resolution!r}")
        if self.stem_channels < 1 or self.num_classes < 0 or self.in_channels < 1:
            raise SpecError("stem_channels and in_channels must be >= 1, num_classes >= 0")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.drop_path < 1.0):
            raise SpecError("dropout and drop_path must be in [0, 1)")

    @property
    def blocks(self) -> tuple[BlockSpec, ...]:
        """All block rows in order, flattened over stages."""
        return tuple(b for stage in self.stages for b in stage)

    @property
    def num_blocks(self) -> int:
        """How many blocks the builder makes (repeats expanded)."""
        return sum(b.repeats for b in self.blocks)

    def replace(self, **changes: Any) -> "NetworkSpec":
        """A copy with some fields changed (specs are immutable); an unknown field is a ``SpecError``."""
        return replace_fields(self, changes)
