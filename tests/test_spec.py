"""Specs: block notation round-trips, JSON round-trips, compound scaling reproduces the reference."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import effml
from effml.errors import SpecError
from effml.models.efficientnet import efficientnet_b0_spec, efficientnet_spec
from effml.spec import (
    BlockSpec,
    compound_scale,
    format_block,
    parse_block,
    plan,
    round_filters,
    round_repeats,
    scale_to_macs,
)
from effml.zoo import spec_from_json, spec_to_json

ALL_MODELS = [n for n in effml.list_models(task="classify")  # the MBConv-family zoo (NetworkSpec)
              if isinstance(effml.get_entry(n).spec(), effml.spec.NetworkSpec)]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_zoo_spec_round_trips_through_block_notation_and_json(name):
    spec = effml.get_entry(name).spec()
    for block in spec.blocks:
        text = format_block(block)
        assert parse_block(text) == block
        assert format_block(parse_block(text)) == text
    again = spec_from_json(spec_to_json(spec))
    assert again == spec


@pytest.mark.parametrize("text", [
    "ds_r1_k3_s1_e1_c16_se0.25",
    "ir_r2_k5_s2_e6_c40_se0.25",
    "ir_r1_k3.5.7_a1.1_p1.1_s2_e6_c32",
    "ir_r3_k3.5.7.9_p1.1_s1_e6_c200_se0.5_nsw",
    "ir_r1_k3_s1_e6_c320_noskip",
])
def test_reference_strings_print_back_unchanged(text):
    assert format_block(parse_block(text)) == text


def test_mixnet_string_parses_to_the_reference_fields():
    b = parse_block("ir_r1_k3.5.7_p1.1_s2_e6_c80_se0.25_nsw")
    assert (b.kind, b.repeats, b.kernel_size, b.exp_groups, b.proj_groups) == ("ir", 1, (3, 5, 7), 1, 2)
    assert (b.stride, b.expand_ratio, b.out_channels, b.se_ratio, b.act) == (2, 6.0, 80, 0.25, "swish")


blocks = st.builds(
    BlockSpec,
    kind=st.sampled_from(["ds", "ir"]),
    out_channels=st.integers(1, 2048),
    repeats=st.integers(1, 20),
    kernel_size=st.lists(st.sampled_from([1, 3, 5, 7, 9, 11]), min_size=1, max_size=5).map(tuple),
    stride=st.sampled_from([1, 2]),
    expand_ratio=st.sampled_from([1.0, 3.0, 4.0, 6.0, 2.5]),
    se_ratio=st.sampled_from([0.0, 0.25, 0.5, 0.125]),
    exp_groups=st.integers(1, 4),
    proj_groups=st.integers(1, 4),
    act=st.sampled_from([None, "relu", "relu6", "swish", "hard_swish"]),
    skip=st.booleans(),
)


@given(blocks)
def test_any_block_round_trips(block):
    assert parse_block(format_block(block)) == block


@pytest.mark.parametrize("text, fragment", [
    ("xx_r1_k3_s1_e1_c16", "block kind 'xx'"),
    ("ir_r1_k3_s1_e6", "output channels"),
    ("ir_r1_k3_s3_e6_c16", "stride"),
    ("ir_r1_kX_s1_e6_c16", "bad value"),
    ("ir_r1_k3_s1_e6_c16_zz9", "unknown token 'zz9'"),
])
def test_bad_block_strings_name_the_problem(text, fragment):
    with pytest.raises(SpecError, match=fragment) as info:
        parse_block(text)
    assert text in str(info.value)


def test_spec_json_rejects_unknown_and_missing_keys():
    data = json.loads(spec_to_json(efficientnet_b0_spec()))
    with pytest.raises(SpecError, match="unknown key.*'widht'"):
        spec_from_json(json.dumps({**data, "widht": 1.1}))
    del data["stem_channels"]
    with pytest.raises(SpecError, match="missing required key 'stem_channels'"):
        spec_from_json(json.dumps(data))
    with pytest.raises(SpecError, match="not valid JSON"):
        spec_from_json("{")


def test_round_filters_matches_the_tf_rule():
    # tensorflow/tpu round_filters; values as in REFERENCE_STAGES below (B2 stem 32, B3 stem 40, ...)
    assert [round_filters(32, w) for w in (1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 4.3)] == \
        [32, 32, 40, 48, 48, 56, 64, 72, 136]
    assert round_filters(1280, 1.1) == 1408 and round_filters(16, 1.1) == 16
    assert [round_repeats(3, d) for d in (1.0, 1.1, 1.8, 3.1)] == [3, 4, 6, 10]


# timm tf_efficientnet_b1..l2 as built (_gen_efficientnet): stem, head, stages n x c.
REFERENCE_STAGES = {
    "b1": (32, 1280, "2x16 3x24 3x40 4x80 4x112 5x192 2x320"),
    "b2": (32, 1408, "2x16 3x24 3x48 4x88 4x120 5x208 2x352"),
    "b3": (40, 1536, "2x24 3x32 3x48 5x96 5x136 6x232 2x384"),
    "b4": (48, 1792, "2x24 4x32 4x56 6x112 6x160 8x272 2x448"),
    "b5": (48, 2048, "3x24 5x40 5x64 7x128 7x176 9x304 3x512"),
    "b6": (56, 2304, "3x32 6x40 6x72 8x144 8x200 11x344 3x576"),
    "b7": (64, 2560, "4x32 7x48 7x80 10x160 10x224 13x384 4x640"),
    "b8": (72, 2816, "4x32 8x56 8x88 11x176 11x248 15x424 4x704"),
    "l2": (136, 5504, "6x72 11x104 11x176 16x344 16x480 22x824 6x1376"),
}


def _stages(spec):
    return " ".join(f"{sum(b.repeats for b in s)}x{s[-1].out_channels}" for s in spec.stages)


@pytest.mark.parametrize("variant", sorted(REFERENCE_STAGES))
def test_compound_scaling_of_b0_reproduces_the_reference_tables(variant):
    width, depth, res, dropout = {"b1": (1.0, 1.1, 240, .2), "b2": (1.1, 1.2, 260, .3),
                                  "b3": (1.2, 1.4, 300, .3), "b4": (1.4, 1.8, 380, .4),
                                  "b5": (1.6, 2.2, 456, .4), "b6": (1.8, 2.6, 528, .5),
                                  "b7": (2.0, 3.1, 600, .5), "b8": (2.2, 3.6, 672, .5),
                                  "l2": (4.3, 5.3, 800, .5)}[variant]
    spec = compound_scale(efficientnet_b0_spec(), width, depth, res, dropout)
    stem, head, stages = REFERENCE_STAGES[variant]
    assert (spec.stem_channels, spec.head_channels, _stages(spec)) == (stem, head, stages)
    assert (spec.resolution, spec.dropout) == (res, dropout)
    assert spec == efficientnet_spec(variant)


def test_lite_keeps_stem_head_and_first_last_depth():
    lite4 = effml.get_entry("efficientnet_lite4").spec()
    assert (lite4.stem_channels, lite4.head_channels, lite4.act) == (32, 1280, "relu6")
    assert _stages(lite4) == "1x24 4x32 4x56 6x112 6x160 8x272 1x448"
    assert all(b.se_ratio == 0 for b in lite4.blocks)


def test_mixnet_l_is_m_scaled_by_1_3_with_fixed_head():
    spec = effml.get_entry("mixnet_l").spec()
    assert spec.stem_channels == 32 and spec.head_channels == 1536
    assert [s[-1].out_channels for s in spec.stages] == [32, 40, 56, 104, 160, 264]


def test_tf_flavour_differs_only_in_padding_and_eps():
    a, b = effml.get_entry("efficientnet_b3").spec(), effml.get_entry("tf_efficientnet_b3").spec()
    assert a.replace(padding="same", bn_eps=1e-3) == b


def test_invalid_network_fields_are_rejected():
    spec = efficientnet_b0_spec()
    with pytest.raises(SpecError, match="padding"):
        spec.replace(padding="valid")
    with pytest.raises(SpecError, match="dropout"):
        spec.replace(dropout=1.5)
    with pytest.raises(SpecError, match="at least one stage"):
        spec.replace(stages=())


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.floats(1.0, 500.0), st.floats(0.3, 3.0))
def test_scaling_to_macs_on_a_grid_finds_what_a_scan_of_the_grid_finds(jumps, target, start):
    # a MACs staircase: the knob k x 0.01 costs 10 + the jumps below it (never falling, with plateaus)
    def cost(knob: float) -> float:
        return 10.0 + sum(j for i, j in enumerate(jumps) if knob >= 0.1 * (i + 1) - 1e-9)

    grid = [k * 0.01 for k in range(1, 400)]
    miss = [abs(math.log(cost(g) / target)) for g in grid]
    top = max(cost(g) for g in grid)
    try:
        found = scale_to_macs(lambda k: k, cost, target, start=start, bounds=(0.01, 3.99), grid=0.01)
    except SpecError:  # only when the bracket would leave the bounds: the target lies beyond the staircase
        assert target > top or target < cost(0.01)
        return
    want = grid[miss.index(min(miss))]  # the first value of the nearest step
    assert found.value == pytest.approx(want) and found.macs == cost(want)


def test_scaling_to_macs_stops_within_the_tolerance_and_says_when_the_target_is_out_of_reach():
    b0 = efficientnet_b0_spec()

    def macs(spec: effml.spec.NetworkSpec) -> int:
        return plan(spec).macs()

    target = 2 * macs(b0)
    found = scale_to_macs(lambda w: compound_scale(b0, width=w), macs, target, start=1.0, bounds=(0.1, 4.0),
                          tolerance=0.01)
    assert abs(math.log(found.macs / target)) <= 0.01 and found.member == compound_scale(b0, width=found.value)
    with pytest.raises(SpecError, match="change the MACs target"):
        scale_to_macs(lambda w: compound_scale(b0, width=w), macs, 100 * target, start=1.0, bounds=(0.1, 4.0))
