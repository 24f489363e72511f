"""SpineNet's scale-permuted search space over the block table: its decisions, its members (the
scale-decreased table among them), equal MACs, and the RetinaNet detector in the search core."""

from __future__ import annotations

import random

import optuna
import pytest
from _effml_cli import run_effml

from effml.detection.retinanet import RetinaNetSpec
from effml.errors import SearchError
from effml.models.spinenet import blocks_from_table, spinenet_graph
from effml.models.spinenet_specs import SCALE_DECREASED_BLOCK_SPECS, SPINENET_BLOCK_SPECS
from effml.search import build_space, load_search_config
from effml.search.spaces.catalog import named_space
from effml.search.spaces.scale_permuted import detector_macs, scaled_to_macs, small_retinanet
from effml.search.study.detection_proxy import search_network

CONFIG = "configs/search_spinenet_shapes.yaml"


@pytest.fixture(scope="module")
def space():
    return named_space("spinenet", num_classes=3, resolution=128)


def rows(spec: RetinaNetSpec) -> list[tuple]:
    return [(b.level, b.block_fn, tuple(b.input_offsets), b.is_output) for b in spec.backbone.blocks]


def test_the_scale_decreased_table_is_a_member_and_the_base(space):
    params = space.params_of(SCALE_DECREASED_BLOCK_SPECS)
    sample = space.member(params)
    assert rows(sample.spec) == [tuple(r) for r in SCALE_DECREASED_BLOCK_SPECS]
    assert sample.spec == space.base  # its MACs are the budget: no rescaling
    # levels in increasing order (Lehmer code all zeros), no level moved
    assert all(params[f"order.intermediate.{i}"] == 0 and params[f"b{i}.level_offset"] == 0 for i in range(11))


def test_the_decisions_are_the_released_spaces(space):
    opts = space.options()
    assert len(opts) == 11 + 5 + 16 * 2 + 11  # two orders, inputs and kind per block, offset per intermediate
    assert opts["order.intermediate.0"] == list(range(11)) and opts["order.output.4"] == [0]
    assert opts["b0.inputs"] == ["0,1"]  # the first block merges the two stem blocks
    assert opts["b5.inputs"] == ["3,4", "3,5", "3,6", "4,5", "4,6", "5,6"]  # the 4 blocks before block 7
    assert len(opts["b15.inputs"]) == 17 * 16 // 2  # an output block: any two earlier blocks
    assert opts["b3.level_offset"] == [-1, 0, 1, 2] and opts["b3.block_fn"] == ["residual", "bottleneck"]


def test_members_are_valid_permutations_at_the_budget(space):
    rng = random.Random(3)
    for _ in range(4):
        sample = space.random_member(rng)
        spinenet_graph(sample.spec.backbone)
        blocks = sample.spec.backbone.blocks
        assert sorted(b.level for b in blocks if b.is_output) == [3, 4, 5, 6, 7]
        inter = sorted(b.level for b in blocks if not b.is_output)
        assert all(1 <= lv <= 7 for lv in inter)
        assert detector_macs(sample.spec) == pytest.approx(space.budget, rel=0.07)
        assert space.params_of(blocks) is not None  # the table maps back onto decisions
        assert rows(space.member(space.params_of(blocks)).spec) == rows(sample.spec)


def test_optuna_asks_the_same_decisions_every_trial(space):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = set()
    for _ in range(2):
        trial = study.ask()
        space.sample(trial)
        names.add(tuple(sorted(trial.params)))
        study.tell(trial, 0.0)
    assert len(names) == 1 and len(next(iter(names))) == len(space.options())


def test_bad_decisions_and_non_members_are_refused_by_name(space):
    params = space.params_of(SCALE_DECREASED_BLOCK_SPECS)
    with pytest.raises(SearchError, match=r"b5.inputs"):
        space.member({**params, "b5.inputs": "0,1"})  # outside the 4-block window
    with pytest.raises(SearchError, match="missing"):
        space.member({k: v for k, v in params.items() if k != "order.output.0"})
    with pytest.raises(SearchError, match="intermediate"):  # SpineNet-49 has 10, the space 11
        space.params_of(SPINENET_BLOCK_SPECS)


def test_scaling_to_macs_reaches_the_nearest_step():
    spec = small_retinanet(blocks_from_table(SPINENET_BLOCK_SPECS), 3, 128)
    for target in (120e6, 250e6):
        scaled = scaled_to_macs(spec, target)
        assert detector_macs(scaled) == pytest.approx(target, rel=0.07)
    with pytest.raises(SearchError, match="raise the MACs target"):
        scaled_to_macs(spec, 1e6)  # below what the head alone costs


def test_the_config_searches_retinanets_and_refuses_a_mismatched_detector():
    cfg = load_search_config(CONFIG)
    space = build_space(cfg)
    assert search_network(cfg, space.base) is space.base
    assert cfg.objective.target == pytest.approx(space.budget / 1e6, abs=0.1)
    wrong = load_search_config(CONFIG, ["search.detector=ssdlite"])
    with pytest.raises(SearchError, match="search.detector=retinanet"):
        search_network(wrong, space.base)


def test_the_command_line_shows_the_space_and_refuses_what_it_cannot_do(tmp_path):
    def effml(*args):
        return run_effml(args, cwd=tmp_path)

    proc = effml("search", "show", "spinenet")
    assert proc.returncode == 0 and "59 decisions" in proc.stdout and "scale-permuted" in proc.stdout, proc.stderr
    proc = effml("search", "show", "spinenet", "-o", "space.json")
    assert proc.returncode != 0 and "search.space: spinenet" in proc.stderr and not (tmp_path / "space.json").exists()
    proc = effml("search", "latency-table", "spinenet")
    assert proc.returncode != 0 and "objective.latency=measured or flops" in proc.stderr
