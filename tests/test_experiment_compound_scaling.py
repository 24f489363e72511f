"""experiments/compound_scaling.py --quick, run as a user runs it: the grid, the scaled networks at
(about) equal MACs, results.json, the plot, and the scaled specs usable by bench and export."""

from __future__ import annotations

import math

from _effml_cli import effml

from _experiment import run_quick

from effml.spec import plan
from effml.zoo import load_spec


def test_quick_run_writes_sane_results_plot_and_usable_specs(tmp_path):
    stdout, res = run_quick("compound_scaling", tmp_path)
    base = res["base"]["macs"]
    tol = res["settings"]["grid"]["tolerance"]
    # --quick's grid: resolution only and depth only, both realisable within the tolerance of 2x
    assert {(r["alpha"], r["beta"]) for r in res["grid"]} == {(1.0, 1.0), (2.0, 1.0)}
    for r in res["grid"]:
        assert abs(math.log(r["macs"] / base / 2)) <= tol and r["phi"] == 1.0
        assert 0 <= r["top1_summary"]["mean"] <= 100 and len(r["top1"]) == 1
    best = max(res["grid"], key=lambda r: r["top1_summary"]["mean"])
    assert res["chosen"] == {k: best[k] for k in ("alpha", "beta", "gamma")}
    at4 = {r["method"]: r for r in res["scaled"] if r["ratio"] == 4.0}
    assert set(at4) == {"compound", "width", "depth", "resolution"}
    for r in at4.values():  # the closest network along each rule: within a staircase step of 4x
        assert 3.4 <= r["macs_ratio"] <= 4.6 and r["macs"] == plan(load_spec(tmp_path / f"{r['name']}.json")).macs()
    at2 = {r["method"]: r for r in res["scaled"] if r["ratio"] == 2.0}
    assert at2["compound"]["name"] == best["name"] and at2["depth"]["alpha"] == 2.0
    assert (tmp_path / "compound_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "step 1: grid" in stdout and "step 2" in stdout
    # the winners are specs that bench and export take by path
    spec = tmp_path / "compound_4x.json"
    assert load_spec(spec).resolution == at4["compound"]["resolution"]
    effml("bench", str(spec), "--runtimes", "eager", "--batch-sizes", "1", "--iters", "2", "--warmup", "0")
    effml("export", str(tmp_path / "compound_2x.json"), "--onnx", str(tmp_path / "c2x.onnx"))
    assert (tmp_path / "c2x.onnx").stat().st_size > 10_000
