"""experiments/spinenet_search.py --quick, run as a user runs it: a search of SpineNet's
scale-permuted space inside RetinaNet, then the winner, SpineNet-49 and the scale-decreased table
at the same MACs trained again; results.json, the plot and detector specs that effml train takes."""

from __future__ import annotations

import pytest
from _experiment import run_quick

from effml.detection.retinanet import RetinaNetSpec
from effml.models.spinenet_specs import SCALE_DECREASED_BLOCK_SPECS, SPINENET_BLOCK_SPECS
from effml.search.study.cost import spec_cost
from effml.search.study.storage import load_study
from effml.zoo import load_spec


def test_quick_run_compares_three_tables_at_the_same_macs(tmp_path):
    stdout, res = run_quick("spinenet_search", tmp_path, "--workers", "1")  # _experiment.py: one worker
    budget = res["budget_macs"]
    study = load_study(str(tmp_path / "search.db"))
    trials = res["search"]["trials"]
    assert len(trials) == 2 == len(study.trials)
    assert study.user_attrs["config"]["search"]["space"] == "spinenet"
    for r in trials:  # every sampled RetinaNet costs the budget (to the step of one channel)
        assert r["macs"] == pytest.approx(budget, rel=0.07)
        assert 0 <= r["accuracy"] <= 1  # the search's ACC: AP50 / 100
    final = res["final"]
    assert set(final) == {"found", "spinenet49", "scale_decreased"}
    tables = {"spinenet49": SPINENET_BLOCK_SPECS, "scale_decreased": SCALE_DECREASED_BLOCK_SPECS}
    for name, f in final.items():
        spec = load_spec(tmp_path / f"{name}.json")  # what effml train|bench|export take
        assert isinstance(spec, RetinaNetSpec) and spec.num_classes == 3 and spec.resolution == 128
        assert spec_cost(spec)["macs"] == f["macs"] == pytest.approx(budget, rel=0.07)
        if name in tables:
            assert [(b.level, b.block_fn, b.input_offsets, b.is_output) for b in spec.backbone.blocks] == [
                (lv, fn, tuple(ins), out) for lv, fn, ins, out in tables[name]]
        assert 0 <= f["AP50_summary"]["mean"] <= 100 and f["latency_ms"] > 0  # percent
    assert final["scale_decreased"]["filter_size_scale"] == 0.25  # the budget is its MACs
    d = res["minus_scale_decreased"]["found"]["mean"]
    assert d == pytest.approx(final["found"]["AP50"][0] - final["scale_decreased"]["AP50"][0])
    assert (tmp_path / "spinenet_search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "minus scale-decreased" in stdout and "block tables" in stdout
