"""experiments/mixnet_kernels.py --quick, run as a user runs it: a TuNAS search of the kernel groups
(the default engine) and a REINFORCE search on MACs, with T from the all-5x5 network, the found
networks against single-kernel networks and MixNet-S, results.json, the plot and the specs."""

from __future__ import annotations

import pytest
from _experiment import run_quick

from effml.search.study.reward import mnasnet_reward
from effml.search.study.storage import load_study
from effml.spec import plan
from effml.zoo import load_spec


def test_quick_run_writes_sane_results_plot_and_usable_specs(tmp_path):
    stdout, res = run_quick("mixnet_kernels", tmp_path, "--workers", "1",  # _experiment.py: one worker
                            "--searches", "tunas", "flops")
    single = {k: load_spec(tmp_path / f"single_k{k}.json") for k in (3, 5, 7)}
    # single-kernel networks: every MBConv row one k x k depthwise kernel; T = the 5x5 network's MACs
    for k, spec in single.items():
        assert {b.kernel_size for stage in spec.stages for b in stage if b.kind == "ir"} == {(k,)}
    assert res["target"]["flops"] == pytest.approx(plan(single[5]).macs() / 1e6)
    assert plan(single[3]).macs() < plan(single[5]).macs() < plan(single[7]).macs()
    groups = {"3", "3.5", "3.5.7", "3.5.7.9"}  # the space's choices per MBConv row
    flops = res["searches"]["flops"]
    rows = flops["trials"]
    assert flops["engine"] == "reinforce"
    assert len(rows) == 2 == len(load_study(str(tmp_path / "flops.db")).trials)
    for r in rows:  # the hard reward on MACs
        assert r["latency_ms"] is None
        assert r["reward"] == pytest.approx(mnasnet_reward(r["accuracy"], r["macs"] / 1e6,
                                                           res["target"]["flops"], 0.0, -1.0))
    best = load_spec(tmp_path / "best_flops.json")
    assert plan(best).macs() == flops["best"]["macs"] == max(rows, key=lambda r: r["reward"])["macs"]
    assert set(flops["kinds_used"]) <= groups
    # TuNAS: one supernet search; its found network is the spec it wrote, rewarded by TuNAS's absolute reward
    tunas = res["searches"]["tunas_s0"]
    assert tunas["engine"] == "tunas" and tunas["steps"] == 6 and set(tunas["kinds_used"]) <= groups
    m = tunas["search_metrics"]
    assert m["reward"] == pytest.approx(m["accuracy"] - 0.1 * abs(m["macs"] / 1e6 / res["target"]["flops"] - 1))
    assert plan(load_spec(tmp_path / "tunas_s0.json")).macs() == m["macs"] == res["final"]["tunas_s0"]["macs"]
    assert (tmp_path / "tunas_s0" / "tunas.json").is_file() and (tmp_path / "tunas_s0.db").is_file()
    final = res["final"]
    assert set(final) == {"best_flops", "tunas_s0", "single_k3", "single_k5", "single_k7", "mixnet_s"}
    assert all(f["seeds"] == [0] for f in final.values())
    assert all(0 <= f["top1_summary"]["mean"] <= 100 and f["latency_ms"] > 0 for f in final.values())
    assert final["mixnet_s"]["kernels"][-2] == "3.5.7.9.11"  # MixNet-S as published
    assert (tmp_path / "mixnet_kernels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "full training" in stdout
