"""experiments/tunas_search.py --quick, run as a user runs it: the search, the members ranked by the
supernet and trained alone, Kendall's tau with its bootstrap range, results.json and the plot."""

from __future__ import annotations

import json

from _experiment import run_quick
from scipy.stats import kendalltau


def test_quick_run_ranks_members_by_the_supernet_and_alone(tmp_path):
    stdout, res = run_quick("tunas_search", tmp_path, "--workers", "1")
    members = res["members"]
    assert len(members) == 4
    for m in members:
        assert 0 <= m["supernet_holdout_top1"] <= 100 and 0 <= m["standalone_val_top1"] <= 100
    k = res["kendall"]
    assert k["tau"] == kendalltau([m["supernet_holdout_top1"] for m in members],
                                  [m["standalone_val_top1"] for m in members]).statistic
    assert -1 <= k["p10"] <= k["p90"] <= 1 and k["n"] == 4
    found = res["found"][0]
    assert found["seed"] == 0 and found["search_cpu_s"] > 0 and 0 <= found["standalone_val_top1"] <= 100
    spec = json.loads((tmp_path / "members" / "found_tunas_s0.json").read_text())
    assert spec == json.loads((tmp_path / "tunas_s0" / "found_model.json").read_text())
    assert (tmp_path / "tunas_search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Kendall tau" in stdout and "TuNAS seed 0: found" in stdout
