"""experiments/autohas.py --quick, run as a user runs it: the table, results.json and the plot."""

from __future__ import annotations


from _experiment import run_quick


def test_quick_run_compares_autohas_with_random_and_tpe(tmp_path):
    stdout, res = run_quick("autohas", tmp_path)
    seed = res["seeds"]["0"]
    for method in ("autohas", "random", "tpe"):
        final = seed["final"][method]
        assert 0 <= final["val_top1"] <= 100 and final["search_minutes"] > 0 and final["trainings_equivalent"] > 0
    assert len(seed["random"]["trials"]) == len(seed["tpe"]["trials"]) == 2
    assert all(0 <= t["accuracy"] <= 1 for t in seed["random"]["trials"])
    a = seed["autohas"]
    assert 0 < a["entropy_end"] <= 1.0 and 0 <= a["reward_end"] <= 1
    assert set(a["hyper"]) == {"optim.name", "optim.lr", "optim.weight_decay", "train.label_smoothing",
                               "data.mixup", "model.dropout"}
    grid = res["ranking"]["val_top1"]
    assert set(grid) == {"autohas_choice", "other"} and all(set(g) == {"smallest", "middle", "largest"}
                                                            for g in grid.values())
    assert (tmp_path / "autohas_vs_baselines.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "val top-1 % after retraining" in stdout and "ranking under" in stdout
