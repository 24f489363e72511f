"""The compact block notation of timm and the TF reference: ``ir_r2_k5_s2_e6_c40_se0.25``.

Tokens after the kind: ``r`` repeats, ``k`` depthwise kernel(s) (``k3.5.7`` = MixConv), ``a`` /
``p`` expansion / projection 1x1 kernels (``a1.1`` = two groups), ``s`` stride, ``e`` expansion,
``c`` output channels, ``se`` SE ratio (of the block input), ``n<act>`` activation override,
``noskip``. See timm ``_efficientnet_builder.py::_decode_block_str``.

Kinds: ``ds`` depthwise-separable, ``ir`` MBConv, ``er`` FusedMBConv (timm's EdgeResidual code:
``er_r1_k3_s2_e4_c32`` is a full 3x3/2 conv to 4x the input channels, then a 1x1 to 32) and
``tucker`` TuckerConv, ours (timm has none), with ``ri`` / ``ro`` the input / output compression
(TF ``input_rank_ratio`` / ``output_rank_ratio``) and no ``e`` token:
``tucker_r1_k3_s1_c32_ri0.25_ro0.75`` (tensorflow/models ``ssd_mobiledet_feature_extractor.py``).
"""

from __future__ import annotations

from typing import Any

from effml.errors import SpecError
from effml.spec.blocks import BLOCK_KINDS, BlockSpec

_ACT_CODES = {"re": "relu", "r6": "relu6", "sw": "swish", "hs": "hard_swish"}
_ACT_NAMES = {v: k for k, v in _ACT_CODES.items()}


def _number(text: str) -> float:
    return float(text)


def _fmt(x: float) -> str:
    return f"{x:g}"


def parse_block(text: str) -> BlockSpec:
    """Parse one block string into a ``BlockSpec``."""
    tokens = text.strip().split("_")
    kind, options = tokens[0], tokens[1:]
    kw: dict[str, Any] = {"kind": kind}
    try:
        for tok in options:
            if tok == "noskip":
                kw["skip"] = False
            elif tok == "skip":
                kw["skip"] = True
            elif tok.startswith("se"):
                kw["se_ratio"] = _number(tok[2:])
            elif tok.startswith("n") and tok[1:] in _ACT_CODES:
                kw["act"] = _ACT_CODES[tok[1:]]
            elif tok.startswith("ri"):  # before 'r' (repeats)
                kw["input_compression"] = _number(tok[2:])
            elif tok.startswith("ro"):
                kw["output_compression"] = _number(tok[2:])
            elif tok[:1] == "r":
                kw["repeats"] = int(tok[1:])
            elif tok[:1] == "k":
                kw["kernel_size"] = tuple(int(k) for k in tok[1:].split("."))
            elif tok[:1] == "a":
                kw["exp_groups"] = len(tok[1:].split("."))
            elif tok[:1] == "p":
                kw["proj_groups"] = len(tok[1:].split("."))
            elif tok[:1] == "s":
                kw["stride"] = int(tok[1:])
            elif tok[:1] == "e":
                kw["expand_ratio"] = _number(tok[1:])
            elif tok[:1] == "c":
                kw["out_channels"] = int(tok[1:])
            else:
                raise SpecError(f"unknown token {tok!r}")
    except ValueError as err:
        raise SpecError(f"block string {text!r}: bad value in a token ({err})") from None
    except SpecError as err:
        raise SpecError(f"block string {text!r}: {err}") from None
    if "out_channels" not in kw:
        raise SpecError(f"block string {text!r}: needs the output channels token, e.g. 'c40'")
    try:
        return BlockSpec(**kw)
    except SpecError as err:
        raise SpecError(f"block string {text!r}: {err}") from None


def format_block(block: BlockSpec) -> str:
    """The canonical block string of a ``BlockSpec`` (``parse_block`` inverts it)."""
    parts = [block.kind, f"r{block.repeats}", "k" + ".".join(str(k) for k in block.kernel_size)]
    if block.exp_groups > 1:
        parts.append("a" + ".".join(["1"] * block.exp_groups))
    if block.proj_groups > 1:
        parts.append("p" + ".".join(["1"] * block.proj_groups))
    parts.append(f"s{block.stride}")
    rules = BLOCK_KINDS[block.kind]
    if rules.expansion:
        parts.append(f"e{_fmt(block.expand_ratio)}")
    parts.append(f"c{block.out_channels}")
    if rules.compression:
        parts += [f"ri{_fmt(block.input_compression)}", f"ro{_fmt(block.output_compression)}"]
    if block.se_ratio > 0:
        parts.append(f"se{_fmt(block.se_ratio)}")
    if block.act is not None:
        parts.append("n" + _ACT_NAMES[block.act])
    if not block.skip:
        parts.append("noskip")
    return "_".join(parts)


def parse_arch(stages: list[list[str]]) -> tuple[tuple[BlockSpec, ...], ...]:
    """Parse a list of stages, each a list of block strings."""
    return tuple(tuple(parse_block(s) for s in stage) for stage in stages)


def format_arch(stages: tuple[tuple[BlockSpec, ...], ...]) -> list[list[str]]:
    """The stages of a spec as lists of block strings."""
    return [[format_block(b) for b in stage] for stage in stages]
