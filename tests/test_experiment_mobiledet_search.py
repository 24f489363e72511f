"""experiments/mobiledet_search.py --quick, run as a user runs it: detection-backbone searches in
the full MobileDets space and in IBN only, with one latency target, the winners trained again,
results.json, the plot and detector specs that effml train takes."""

from __future__ import annotations

import pytest
from _experiment import run_quick

from effml.detection.ssdlite import SSDLiteSpec
from effml.search.study.reward import mnasnet_reward
from effml.search.study.storage import load_study
from effml.zoo import load_spec


def test_quick_run_writes_fronts_layer_kinds_and_detector_specs(tmp_path):
    stdout, res = run_quick("mobiledet_search", tmp_path, "--workers", "1")  # _experiment.py: one worker
    t = res["target"]["latency_ms"]
    assert t > 0
    assert set(res["searches"]) == {"full", "ibn"}
    for name, s in res["searches"].items():
        rows = s["trials"]
        study = load_study(str(tmp_path / f"{name}.db"))
        assert len(rows) == 2 == len(study.trials)
        assert study.user_attrs["config"]["search"]["space"] == {"full": "mobiledet", "ibn": "mobiledet_ibn"}[name]
        for r in rows:  # ACC is the held-out AP50 / 100 of the whole detector, LAT its latency
            assert 0 <= r["accuracy"] <= 1 and r["latency_ms"] > 0
            assert r["reward"] == pytest.approx(mnasnet_reward(r["accuracy"], r["latency_ms"], t))
        # the front is non-dominated and sorted by latency
        front = s["front"]
        assert [p["latency_ms"] for p in front] == sorted(p["latency_ms"] for p in front)
        assert all(a["AP50"] < b["AP50"] for a, b in zip(front, front[1:]))
        assert max(p["AP50"] for p in front) == pytest.approx(100 * max(r["accuracy"] for r in rows))  # percent
        spec = load_spec(tmp_path / f"best_{name}.json")
        assert isinstance(spec, SSDLiteSpec)
    # the IBN-only space samples IBN layers only; its layer counts say so
    assert res["searches"]["ibn"]["layers_sampled"]["fused IBN"] == 0 == res["searches"]["ibn"]["layers_sampled"]["Tucker"]
    assert sum(res["searches"]["full"]["best_layers"].values()) == sum(res["final"]["reference"]["layers"].values())
    final = res["final"]
    assert set(final) == {"reference", "full", "ibn"}
    assert final["reference"]["layers"]["IBN"] == sum(final["reference"]["layers"].values())
    assert all(0 <= f["AP50_summary"]["mean"] <= 100 and f["latency_ms"] > 0 for f in final.values())  # percent
    assert (tmp_path / "mobiledet_search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Pareto front" in stdout and "val AP50" in stdout
