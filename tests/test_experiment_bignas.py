"""experiments/bignas.py --quick, run as a user runs it: the tables, results.json and the plot."""

from __future__ import annotations

import json

from _experiment import run_quick


def test_quick_run_writes_sane_results_tables_and_plot(tmp_path):
    stdout, res = run_quick("bignas", tmp_path)
    targets = res["settings"]["targets"]
    assert targets == [1.5e6, 3e6]
    rows = res["seeds"]["0"]["children"]
    assert [r["target"] for r in rows] == targets
    for r in rows:
        assert 0 < r["macs"] <= r["target"] and r["params"] > 0
        assert 0 <= r["supernet_val_top1"] <= 100 and 0 <= r["standalone_val_top1"] <= 100
        assert r["standalone_minutes"] > 0
    # each selected child was written as a spec and trained alone at its own resolution
    for t, r in zip(targets, rows):
        spec = json.loads((tmp_path / f"child_seed0_{t / 1e6:g}M.json").read_text())
        run = json.loads((tmp_path / f"standalone_child_seed0_{t / 1e6:g}M" / "run.json").read_text())
        assert run["input_size"] == r["resolution"] and spec
    ab = res["seeds"]["0"]["ablations"]
    assert set(ab) == {"full", "no_sandwich"} and all(a["minutes"] > 0 for a in ab.values())
    gap = res["summary"]["per_target"][0]["gap"]["mean"]
    assert gap == rows[0]["supernet_val_top1"] - rows[0]["standalone_val_top1"]
    # the noise floor: the child at the ablation target (1.5M) trained alone with each seed (one here)
    assert res["settings"]["data"] == "fashion_mnist"
    assert res["noise_floor"]["val_top1"] == [rows[0]["standalone_val_top1"]]
    assert (tmp_path / "bignas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trained alone" in stdout and "ablations" in stdout
