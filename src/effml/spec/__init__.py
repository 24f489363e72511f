"""Network specs: a network is data, printed and parsed in the block notation, written to JSON by one
codec, resolved into a per-layer plan."""

from effml.spec.blocks import BLOCK_KINDS, BlockSpec, NetworkSpec
from effml.spec.codec import from_dict, to_dict
from effml.spec.composite import ComposedSpec
from effml.spec.entry import ModelEntry, Preprocess
from effml.spec.notation import format_arch, format_block, parse_arch, parse_block
from effml.spec.plan import LayerPlan, NetworkPlan, plan
from effml.spec.scaling import MacsMatch, compound_scale, round_filters, round_repeats, scale_to_macs

__all__ = [
    "BLOCK_KINDS", "BlockSpec", "ComposedSpec", "LayerPlan", "MacsMatch", "ModelEntry", "NetworkPlan",
    "NetworkSpec", "Preprocess", "compound_scale", "format_arch", "format_block", "from_dict", "parse_arch",
    "parse_block", "plan", "round_filters", "round_repeats", "scale_to_macs", "to_dict",
]
