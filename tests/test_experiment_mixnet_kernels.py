"""experiments/mixnet_kernels.py --quick, run as a user runs it: kernel searches on MACs and on
measured latency with T from the all-5x5 network, the winners against single-kernel networks and
MixNet-S, results.json, the plot and the specs."""

from __future__ import annotations

import pytest
from _experiment import run_quick

from effml.search.study.reward import mnasnet_reward
from effml.search.study.storage import load_study
from effml.spec import plan
from effml.zoo import load_spec


def test_quick_run_writes_sane_results_plot_and_usable_specs(tmp_path):
    stdout, res = run_quick("mixnet_kernels", tmp_path, "--workers", "1")  # _experiment.py: one worker
    single = {k: load_spec(tmp_path / f"single_k{k}.json") for k in (3, 5, 7)}
    # single-kernel networks: every MBConv row one k x k depthwise kernel; T = the 5x5 network's MACs
    for k, spec in single.items():
        assert {b.kernel_size for stage in spec.stages for b in stage if b.kind == "ir"} == {(k,)}
    assert res["target"]["flops"] == pytest.approx(plan(single[5]).macs() / 1e6)
    assert plan(single[3]).macs() < plan(single[5]).macs() < plan(single[7]).macs()
    for name, s in res["searches"].items():
        rows = s["trials"]
        assert len(rows) == 2 == len(load_study(str(tmp_path / f"{name}.db")).trials)
        for r in rows:
            if name == "flops":  # the hard reward on MACs
                assert r["latency_ms"] is None
                assert r["reward"] == pytest.approx(mnasnet_reward(r["accuracy"], r["macs"] / 1e6,
                                                                   res["target"]["flops"], 0.0, -1.0))
            else:
                assert r["reward"] == pytest.approx(mnasnet_reward(r["accuracy"], r["latency_ms"],
                                                                   res["target"]["latency"]))
        best = load_spec(tmp_path / f"best_{name}.json")
        assert plan(best).macs() == s["best"]["macs"] == max(rows, key=lambda r: r["reward"])["macs"]
        # every searched row's kernels come from the space's groups
        assert set(s["kinds_used"]) <= {"3", "3.5", "3.5.7", "3.5.7.9"}
    final = res["final"]
    assert set(final) == {"best_flops", "best_latency", "single_k3", "single_k5", "single_k7", "mixnet_s"}
    assert all(0 <= f["top1_summary"]["mean"] <= 100 and f["latency_ms"] > 0 for f in final.values())
    assert final["mixnet_s"]["kernels"][-2] == "3.5.7.9.11"  # MixNet-S as published
    assert (tmp_path / "mixnet_kernels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "full training" in stdout
