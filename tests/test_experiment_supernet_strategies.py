"""experiments/supernet_strategies.py --quick, run as a user runs it: every strategy's studies scored
by one supernet, each seed's best reward as its study records it, the medians over seeds, the
comparison with random search's spread, results.json and the plot."""

from __future__ import annotations

import statistics

from _experiment import run_quick

from effml.search.study.storage import load_study


def test_quick_run_scores_every_strategy_and_seed_by_the_supernet(tmp_path):
    stdout, res = run_quick("supernet_strategies", tmp_path, "--workers", "1")
    assert res["trials"] == 12 and res["seeds"] == [0, 1] and res["space"] == "bignas"
    assert set(res["runs"]) == {"random", "evolution", "tpe", "reinforce"}
    for strategy, runs in res["runs"].items():
        for r in runs:
            study = load_study(str(tmp_path / f"{strategy}_s{r['seed']}.db"))
            values = [t.values[0] for t in sorted(study.trials, key=lambda t: t.number)]
            assert values == r["rewards"] and len(values) == 12 and r["best"] == max(values)
            # scored by the supernet: no trial trained a network
            assert all(t.user_attrs["metrics"]["accuracy"] <= 1 for t in study.trials)
        assert res["best"][strategy]["median"] == statistics.median(r["best"] for r in runs)
    top = res["best"]["random"]["max"]
    assert res["above_every_random_seed"] == {s: res["best"][s]["median"] > top for s in ("evolution", "tpe", "reinforce")}
    assert (tmp_path / "supernet_strategies.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best reward, median (min-max) over seeds" in stdout
