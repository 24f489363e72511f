"""Network specs: a network is data, printed and parsed in the block notation."""

from effml.spec.blocks import BLOCK_KINDS, BlockSpec, NetworkSpec
from effml.spec.notation import (
    format_arch,
    format_block,
    parse_arch,
    parse_block,
    spec_from_dict,
    spec_from_json,
    spec_to_dict,
    spec_to_json,
)
from effml.spec.scaling import compound_scale, round_filters, round_repeats

__all__ = [
    "BLOCK_KINDS", "BlockSpec", "NetworkSpec", "compound_scale", "format_arch", "format_block",
    "parse_arch", "parse_block", "round_filters", "round_repeats", "spec_from_dict",
    "spec_from_json", "spec_to_dict", "spec_to_json",
]
