"""experiments/akd.py --quick, run as a user runs it: two teachers, plain NAS and AKD searches
with one target, every winner distilled from every teacher, results.json, the plot and the specs."""

from __future__ import annotations

import pytest
from _experiment import run_quick

from effml.search.study.storage import load_study
from effml.spec import plan
from effml.zoo import load_spec


def test_quick_run_distils_in_the_akd_proxies_and_writes_results_plot_and_specs(tmp_path):
    stdout, res = run_quick("akd", tmp_path, "--workers", "1")  # _experiment.py: one worker
    teachers = ("mbconv", "mixconv")
    assert set(res["teachers"]) == set(teachers)
    assert set(res["searches"]) == {"nas", "akd_mbconv", "akd_mixconv"}
    for name, s in res["searches"].items():
        study = load_study(str(tmp_path / f"{name}.db"))
        assert len(s["trials"]) == 2 == len(study.trials)
        # the AKD proxies distil from their own teacher's trained weights; plain NAS from none
        distill = study.user_attrs["config"]["proxy"]["distill"]
        if name == "nas":
            assert distill["teacher"] is None
        else:
            teacher = name.removeprefix("akd_")
            assert distill["teacher"] == str(tmp_path / f"teacher_{teacher}.json")
            assert distill["teacher_weights"].startswith(str(tmp_path / f"teacher_{teacher}"))
        assert study.user_attrs["objective"]["target"] == pytest.approx(res["target"]["latency_ms"])
        # the winner is a spec that effml train / bench / export take by path
        assert plan(load_spec(tmp_path / f"best_{name}.json")).macs() == s["best"]["macs"]
        assert s["best"]["reward"] == max(r["reward"] for r in s["trials"])
    # every winner distilled from every teacher; a winner two searches share is trained once
    for name, row in res["final"].items():
        assert set(row) == set(teachers)
        for t in teachers:
            assert len(row[t]["top1"]) == 1 and 0 <= row[t]["top1"][0] <= 100
            run = tmp_path / f"final_{res['same_winner_as'][name]}_kd_{t}_seed0"
            assert f"teacher: {tmp_path / f'teacher_{t}.json'}" in (run / "config.yaml").read_text()
    claim = res["claims"]["akd_mixconv - nas, both taught by mixconv"]
    assert claim["mean"] == pytest.approx(res["final"]["akd_mixconv"]["mixconv"]["top1"][0]
                                          - res["final"]["nas"]["mixconv"]["top1"][0])
    # the teachers keep 8x8 maps at 32 px: one stage of stride 2 after the stem
    for t in teachers:
        spec = load_spec(tmp_path / f"teacher_{t}.json")
        assert [b.stride for stage in spec.stages for b in stage].count(2) == 1
    assert (tmp_path / "akd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "each winner distilled from each teacher" in stdout and "teacher preference" in stdout
