"""Typed, immutable records that describe one block row and a whole network."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from effml.errors import SpecError

# Block kinds, by the papers' names. The short codes are timm's / the TF reference's block notation.
BLOCK_KINDS = {
    "ds": "DepthwiseSeparable",  # MobileNet-V1 style dw -> [SE] -> pw (EfficientNet stage 1, e == 1)
    "ir": "MBConv",  # inverted residual bottleneck (MnasNet / EfficientNet MBConv)
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
    expand_ratio: float = 1.0
    se_ratio: float = 0.0  # SE width relative to the *block input* channels (TF convention)
    exp_groups: int = 1  # groups of the 1x1 expansion conv (MixNet 'a1.1' -> 2)
    proj_groups: int = 1  # groups of the 1x1 projection conv (MixNet 'p1.1' -> 2)
    act: str | None = None  # per-block override of the network activation
    skip: bool = True  # residual when stride 1 and in == out; False is 'noskip'

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
            (0.0 <= self.se_ratio <= 1.0, "se_ratio must be in [0, 1]"),
            (self.exp_groups >= 1 and self.proj_groups >= 1, "groups must be >= 1"),
            (self.act is None or self.act in ACTIVATIONS, f"act must be one of {ACTIVATIONS}"),
        ]
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
        """A copy with some fields changed (specs are immutable)."""
        return replace(self, **changes)
