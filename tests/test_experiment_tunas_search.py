"""experiments/tunas_search.py --quick, run as a user runs it: the search, the members ranked by the
supernet (full and cheaper scoring) and trained alone, Kendall's tau with its bootstrap range, the
found network over training seeds, random search's pick, results.json and the plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _experiment import run_quick
from scipy.stats import kendalltau

from effml.search.oneshot.tunas import tunas_reward


def test_quick_run_ranks_members_by_the_supernet_and_alone(tmp_path):
    stdout, res = run_quick("tunas_search", tmp_path, "--workers", "1")
    members = res["members"]
    assert len(members) == 4
    for m in members:
        assert 0 <= m["supernet_holdout_top1"] <= 100 and 0 <= m["standalone_val_top1"] <= 100
        assert 0 <= m["supernet_cheap_top1"] <= 100 and m["mmacs"] > 0
        assert m["reward"] == pytest.approx(tunas_reward(m["standalone_val_top1"] / 100, m["mmacs"], res["target"], -0.1))
    for key, field in (("kendall", "supernet_holdout_top1"), ("kendall_cheap", "supernet_cheap_top1")):
        k = res[key]
        assert k["tau"] == pytest.approx(kendalltau([m[field] for m in members],
                                                    [m["standalone_val_top1"] for m in members]).statistic, nan_ok=True)
        assert k["n"] == 4
    assert res["score_cpu_s"]["full"] > 0 and res["score_cpu_s"]["cheap"] > 0
    found = res["found"][0]
    assert found["seed"] == 0 and found["search_cpu_s"] > 0 and found["standalone_val_top1"]["n"] == 2
    assert 0 <= found["standalone_val_top1"]["min"] <= found["standalone_val_top1"]["max"] <= 100
    # random search's pick: the best-reward member (all of them: one draw)
    best = max(members, key=lambda m: m["reward"])
    assert res["random_search_all_members"]["median"] == best["standalone_val_top1"]
    r = res["random_search_equal_cpu"]
    assert 1 <= r["k"] <= 4 and r["p10"] <= r["median"] <= r["p90"]
    c = res["cost"]
    assert c["largest_trainings"] == pytest.approx(c["search_cpu_s"] / (c["largest_step_s"] * c["search_steps"]))
    spec = json.loads((tmp_path / "members" / "found_tunas_s0.json").read_text())
    assert spec == json.loads((tmp_path / "tunas_s0" / "found_model.json").read_text())
    assert (tmp_path / "tunas_search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Kendall tau" in stdout and "TuNAS seed 0: found" in stdout
    assert found["standalone_reward"] == pytest.approx(tunas_reward(found["standalone_val_top1"]["mean"] / 100,
                                                                    found["mmacs"], res["target"], -0.1))


def test_variants_name_their_overrides_and_search_seeds():
    # a variant's run is a whole search (about a minute in --quick): its parsing is checked here
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from tunas_search import parse_variants

    got = parse_variants(["lr4:0,1,2=tunas.controller_lr=0.02", "uniform=tunas.delay=0.99,tunas.beta=-0.2"], [5])
    assert got == {"lr4": (["tunas.controller_lr=0.02"], [0, 1, 2]),
                   "uniform": (["tunas.delay=0.99", "tunas.beta=-0.2"], [5])}
    for bad in ("lr4", "lr4=0.02", "lr4:x=tunas.controller_lr=0.02", "4x=tunas.delay=0.99"):
        with pytest.raises(SystemExit, match="--variants"):
            parse_variants([bad], [0])
