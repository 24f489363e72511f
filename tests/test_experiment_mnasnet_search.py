"""experiments/mnasnet_search.py --quick, run as a user runs it: four searches with one target, the
winners trained again, the MACs-latency rank correlation, results.json, the plot and the specs."""

from __future__ import annotations

import pytest
from _experiment import run_quick

from effml.search.study.reward import mnasnet_reward
from effml.search.study.storage import load_study
from effml.spec import plan
from effml.zoo import load_spec


def test_quick_run_writes_sane_results_plot_and_usable_specs(tmp_path):
    stdout, res = run_quick("mnasnet_search", tmp_path, "--workers", "1", "--long-epochs", "2")  # one worker
    target = res["target"]
    assert target["latency_ms"] > 0 and target["mmacs"] > 0
    assert set(res["searches"]) == {"reinforce_soft", "random_soft", "reinforce_hard", "reinforce_flops"}
    for name, s in res["searches"].items():
        rows = s["trials"]
        assert len(rows) == 3 == len(load_study(str(tmp_path / f"{name}.db")).trials)
        for r in rows:
            assert 0 <= r["accuracy"] <= 1 and r["latency_quiet_ms"] > 0
            if name == "reinforce_flops":  # MACs in place of latency, against the reference's MACs
                assert r["latency_ms"] is None
                assert r["reward"] == pytest.approx(mnasnet_reward(r["accuracy"], r["macs"] / 1e6, target["mmacs"]))
            elif name == "reinforce_hard":  # nothing gained under T, latency / T penalised above
                assert r["reward"] == pytest.approx(mnasnet_reward(r["accuracy"], r["latency_ms"],
                                                                   target["latency_ms"], 0.0, -1.0))
            else:
                assert r["reward"] == pytest.approx(mnasnet_reward(r["accuracy"], r["latency_ms"], target["latency_ms"]))
        best = max(rows, key=lambda r: r["reward"])
        assert s["summary"]["best"]["number"] == best["number"]
        # the winner is a spec that effml train / bench / export take by path
        spec = load_spec(tmp_path / f"best_{name}.json")
        assert plan(spec).macs() == best["macs"]
    final = res["final"]
    assert set(final) == set(res["searches"]) | {"reference"}
    assert all(0 <= f["top1_summary"]["mean"] <= 100 and f["latency_ms"] > 0 for f in final.values())
    same = res["same_winner_as"]  # a winner two searches share is trained once, under the first name
    for name, first in same.items():
        assert final[name]["top1"] == final[first]["top1"]
        assert (tmp_path / f"final_{name}_seed0").is_dir() == (name == first)
    # the longer runs: the reference and the first search's winner, once, with their val curve
    # (--quick stops every training after 3 steps, so the curve is one point)
    assert set(res["long"]) == {"reference", "reinforce_soft"}
    for r in res["long"].values():
        assert r["epochs"] == 2 and len(r["curve"]) == 1 and (tmp_path / "long_reference_2ep").is_dir()
        assert r["top1"] == pytest.approx(r["curve"][-1]["ema_top1"])
    c = res["correlation"]
    assert c["models"] == len(res["models"]) >= 4 and -1 <= c["spearman_macs_latency"] <= 1
    assert (tmp_path / "mnasnet_search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "MACs vs measured latency" in stdout and "full training" in stdout
