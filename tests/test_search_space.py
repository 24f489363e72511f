"""Search spaces over the spec: sampling gives plain specs that build, sizes, extremes,
persistence, the named spaces' definitions, and clear errors for bad spaces."""

from __future__ import annotations

import itertools
import json
import random

import optuna
import pytest
import torch
import yaml

from effml.errors import SearchError
from effml.models.network import EfficientNet
from effml.search import Choice, HyperChoice, SearchSpace, compound_grid, named_space, space_from_dict
from effml.search.spaces.search_space import NETWORK_FIELDS, ROW_FIELDS
from effml.spec import NetworkSpec, parse_arch
from effml.spec.plan import plan

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = NetworkSpec(stages=parse_arch([["ds_r1_k3_s1_e1_c16"], ["ir_r2_k3_s2_e4_c24"], ["ir_r1_k5_s2_e4_c40_se0.25"]]),
                   stem_channels=16, head_channels=64, num_classes=10, resolution=32)


def _space(**kw) -> SearchSpace:
    choices = (Choice("kind", ("ir", "er", "tucker"), 1, 0), Choice("kernel_size", (3, 5), 1, 0),
               Choice("expand_ratio", (3.0, 6.0), 1, 0), Choice("filters", (0.75, 1.0, 1.25), 2, 0),
               Choice("repeats", (-1, 0, 1), 1, 0), Choice("se_ratio", (0.0, 0.25), 2, 0),
               Choice("resolution", (24, 32)))
    return SearchSpace("tiny", BASE, choices, **kw)


def test_a_sample_is_a_plain_spec_that_builds_and_runs():
    space = _space(hyper=(HyperChoice("optim.lr", "float", low=1e-4, high=1e-2, log=True),
                          HyperChoice("data.batch_size", "categorical", options=(16, 32))))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(6):
        sample = space.sample(study.ask())
        assert isinstance(sample.spec, NetworkSpec)
        net = EfficientNet(sample.spec).eval()
        with torch.no_grad():
            out = net(torch.randn(1, 3, sample.spec.resolution, sample.spec.resolution))
        assert out.shape == (1, 10)
        assert [o.split("=")[0] for o in sample.overrides] == ["optim.lr", "data.batch_size"]
        assert space.member(sample.params).spec == sample.spec  # decisions alone give the member


def test_fields_a_kind_does_not_take_are_reset():
    space = _space()
    params = space.largest().params | {"s1.r0.kind": "tucker"}
    row = space.member(params).spec.stages[1][0]
    assert row.kind == "tucker" and row.expand_ratio == 1.0 and row.se_ratio == 0.0
    params["s1.r0.kind"] = "ir"
    row = space.member(params).spec.stages[1][0]
    assert row.expand_ratio == 6.0 and row.kernel_size == (5,) and row.repeats == 3


def test_filters_multiply_and_round_like_tf_and_repeats_add():
    space = _space()
    small = space.smallest().spec
    big = space.largest().spec
    assert small.stages[2][0].out_channels == 32  # round_filters(40 * 0.75) = 32 (multiple of 8)
    assert big.stages[2][0].out_channels == 48  # round_filters(40 * 1.25) = 48 (50 -> 48 keeps > 90%)
    assert (small.stages[1][0].repeats, big.stages[1][0].repeats) == (1, 3)
    assert (small.resolution, big.resolution) == (24, 32)
    assert plan(small).macs() < plan(space.member(_base_params(space)).spec).macs() < plan(big).macs()


def _base_params(space: SearchSpace) -> dict:
    return {"s1.r0.kind": "ir", "s1.r0.kernel_size": 3, "s1.r0.expand_ratio": 3.0, "s2.r0.filters": 1.0,
            "s1.r0.repeats": 0, "s2.r0.se_ratio": 0.0, "resolution": 32}


def test_size_counts_distinct_specs():
    space = _space()
    # row s1: ir and er take kernel x expansion x repeats (2 * 2 * 2 * 3); tucker has no expansion,
    # so its two expansion decisions give one spec (2 kernels x 3 repeats); row s2: 3 x 2; resolution 2
    assert space.decisions() == 3 * 2 * 2 * 3 * 3 * 2 * 2
    distinct_s1 = 2 * 2 * 2 * 3 + 2 * 3
    assert space.size() == distinct_s1 * 6 * 2
    # brute force agrees
    names = [c.name for c in space.choices]
    specs = {space.member(dict(zip(names, combo))).spec
             for combo in itertools.product(*(c.options for c in space.choices))}
    assert len(specs) == space.size()


def test_round_trip_through_json_and_yaml():
    space = _space(hyper=(HyperChoice("optim.lr", "float", low=1e-4, high=1e-2, log=True),))
    data = json.loads(json.dumps(space.to_dict()))
    assert space_from_dict(data) == space
    assert space_from_dict(yaml.safe_load(yaml.safe_dump(space.to_dict()))) == space
    sample = space.random_member(random.Random(0))
    assert space_from_dict(data).member(sample.params).spec == sample.spec


def test_layer_variants_cover_every_layer_of_random_members():
    space = _space()
    keys = {(l.kind, l.in_channels, l.out_channels, l.kernel_size, l.stride, l.input_size, l.mid_channels,
             l.se_channels, l.residual) for l, _ in space.layer_variants()}
    rng = random.Random(1)
    for _ in range(30):
        for l in plan(space.random_member(rng).spec).layers:
            assert (l.kind, l.in_channels, l.out_channels, l.kernel_size, l.stride, l.input_size,
                    l.mid_channels, l.se_channels, l.residual) in keys


@pytest.mark.parametrize("name", ["mnasnet", "mobiledet", "mobiledet_ibn", "mobiledet_ibn_fused", "mixnet_kernels",
                                  "efficientnet_compound"])
def test_named_spaces_sample_members_that_build(name):
    space = named_space(name, num_classes=10, resolution=64)
    rng = random.Random(0)
    for sample in (space.random_member(rng), space.smallest(), space.largest()):
        net = EfficientNet(sample.spec).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert plan(space.smallest().spec).macs() <= plan(space.largest().spec).macs()


def test_mnasnet_space_is_googles_released_space():
    space = named_space("mnasnet")
    rows = {}
    for c in space.choices:
        rows.setdefault(c.stage, {})[c.field] = c.options
    assert len(rows) == 7  # 7 blocks over MobileNetV2
    assert rows[1] == {"kind": ("ir", "er"), "expand_ratio": (1.0, 3.0, 6.0), "kernel_size": (3, 5),
                       "se_ratio": (0.0, 0.25), "out_channels": (18, 24, 30), "repeats": (-1, 0, 1)}
    assert rows[0]["repeats"] == (0, 1)  # a 1-layer block: {1, 2} layers
    assert [len(rows[s]) for s in range(7)] == [6] * 7
    # 216 decision vectors per block (144 for the 1-layer blocks), as the released space
    assert space.decisions() == 216 ** 5 * 144 ** 2
    assert space.base.stages[3][0].out_channels == 64 and space.base.stages[3][0].repeats == 4


def test_compound_grid_meets_the_constraint_and_holds_the_papers_point():
    grid = compound_grid()
    assert (1.2, 1.1, 1.15) in grid  # EfficientNet section 4: alpha 1.2, beta 1.1, gamma 1.15
    assert all(abs(a * b * b * g * g - 2) <= 0.1 for a, b, g in grid)
    space = named_space("efficientnet_compound")
    member = space.member({"compound": "1.2,1.1,1.15"}).spec
    assert member.resolution == 256  # 224 * 1.15 = 257.6, rounded to a multiple of 8


@pytest.mark.parametrize("data, message", [
    ({"base": "efficientnet_b0", "choices": [{"at": "s1.r0", "field": "colour", "options": [1]}]},
     "unknown block field 'colour'"),
    ({"base": "efficientnet_b0", "choices": [{"field": "depth", "options": [1.0]}]}, "unknown network field"),
    ({"base": "efficientnet_b0", "choices": [{"at": "s9.r0", "field": "kernel_size", "options": [3]}]},
     "no block row s9.r0"),
    ({"base": "efficientnet_b0", "choices": [{"at": "s2.r0", "field": "repeats", "options": [-5]}]},
     "s2.r0: the choice repeats=-5 gives an invalid block"),
    ({"base": "efficientnet_b0", "choices": [{"at": "s2.r0", "field": "kernel_size", "options": [[3, 5]]},
                                             {"at": "s2.r0", "field": "kind", "options": ["er"]}]},
     "gives an invalid block"),
    ({"base": "efficientnet_b0", "choices": [{"field": "resolution", "options": [0]}]}, "invalid spec"),
    ({"base": "no_such_model"}, "is not a model name or spec"),
    ({"base": "efficientnet_b0", "hyper": [{"key": "optim.lrr", "kind": "float", "low": 0.1, "high": 1}]},
     "optim.lrr"),
    ({"base": "efficientnet_b0", "hyper": [{"key": "optim.lr", "kind": "float", "low": 0, "high": 1, "log": True}]},
     "log-scale range needs low > 0"),
    ({"base": "efficientnet_b0", "choices": [{"at": "s2", "field": "kernel_size", "options": [3]}]},
     "s<stage>.r<row>"),
    ({"base": "efficientnet_b0", "choices": [{"at": "s2.r0", "field": "kernel_size", "options": [3, 3]}]},
     "repeat a value"),
])
def test_bad_spaces_are_clear_errors(data, message):
    with pytest.raises(SearchError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        space_from_dict(data, source="space.yaml")


def test_unknown_named_space_lists_the_named_ones():
    with pytest.raises(SearchError, match="mnasnet"):
        named_space("nasnet")


def test_field_tables_are_what_the_docs_say():
    assert "kind" in ROW_FIELDS and "filters" in ROW_FIELDS and "out_channels" in ROW_FIELDS
    assert NETWORK_FIELDS == ("resolution", "width", "compound", "stem_channels", "head_channels")


def test_stem_and_head_widths_are_network_choices():
    from effml.search.spaces.search_space import Choice, SearchSpace
    from effml.zoo import resolve_spec

    space = SearchSpace("widths", resolve_spec("efficientnet_b0"),
                        (Choice("stem_channels", (24, 32)), Choice("head_channels", (960, 1280))))
    small = space.smallest().spec
    assert (small.stem_channels, small.head_channels) == (24, 960)
    assert space.largest().spec.head_channels == 1280


@pytest.mark.parametrize("data, message", [
    ([1, 2], "space.yaml: expected a mapping of keys (name, base, choices, hyper, phi), got [1, 2]"),
    ({"base": "efficientnet_b0", "choises": []}, "space.yaml: unknown key 'choises'. Did you mean 'choices'?"),
    ({"name": "x"}, "space.yaml: base: missing"),
    ({"base": "efficientnet_b0", "choices": [{"field": "kernel_size", "at": "s1.r0"}]},
     "space.yaml: choices[0].options: missing"),
    ({"base": "efficientnet_b0", "choices": [{"field": "kernel_size", "options": [3], "att": "s1.r0"}]},
     "space.yaml: choices[0]: unknown key 'att'. Did you mean 'at'?"),
    ({"base": "efficientnet_b0", "hyper": [{"kind": "float", "low": 0.1, "high": 1}]}, "space.yaml: hyper[0].key: missing"),
    ({"base": "efficientnet_b0", "hyper": [{"key": "optim.lr", "kind": "float", "low": "low", "high": 1}]},
     "space.yaml: hyper[0].low: expected float | int | null, got 'low' (str)"),
])
def test_a_space_file_of_the_wrong_shape_is_one_line_that_names_the_key(data, message):
    with pytest.raises(SearchError) as info:
        space_from_dict(data, source="space.yaml")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
