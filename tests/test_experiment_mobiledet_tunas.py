"""experiments/mobiledet_tunas.py --quick, run as a user runs it: a TuNAS search per space on the
shapes set, each found detector and the reference trained alone, and the per-space table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _experiment import run_quick

from effml.search.study.cost import spec_cost
from effml.zoo import spec_from_dict


def test_quick_run_searches_each_space_and_trains_what_it_found(tmp_path):
    stdout, res = run_quick("mobiledet_tunas", tmp_path, "--workers", "1")
    assert set(res["spaces"]) == {"full", "ibn"} and res["target_mmacs"] == 15.6
    for name, space in res["spaces"].items():
        found = res["found"][f"{name}_s0"]
        assert found["steps"] == 8 and found["search_cpu_s"] > 0
        spec = found["spec"]
        assert spec["kind"] == "ssdlite"
        kinds = space["layers"][0]
        if name == "ibn":  # the IBN-only space finds IBN layers only
            assert kinds["fused IBN"] == kinds["Tucker"] == 0
        assert space["mmacs"][0] == pytest.approx(spec_cost(spec_from_dict(spec))["macs"] / 1e6)
        assert json.loads((tmp_path / f"{name}_s0.json").read_text()) == spec  # the spec trained alone
        trained = res["trained"][f"{name}_s0"]
        assert 0 <= trained["AP50"][0] <= 100 and space["val_AP50"]["mean"] == trained["AP50_summary"]["mean"]
    assert res["noise_floor"] == res["trained"]["reference"]["AP50_summary"]
    assert (tmp_path / "mobiledet_tunas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "the noise floor" in stdout


def test_the_reference_trained_one_seed_a_job_is_one_record_over_its_seeds():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from mobiledet_tunas import merge_seeds

    runs = [{"macs": 1e8, "latency_ms": 8.0, "AP50": [a], "AP50_summary": {"mean": a}, "minutes": [m]}
            for a, m in ((23.0, 2.7), (21.0, 2.6), (22.0, 2.8))]
    merged = merge_seeds(runs)
    assert merged["AP50"] == [23.0, 21.0, 22.0] and merged["minutes"] == [2.7, 2.6, 2.8]
    assert merged["AP50_summary"]["min"] == 21.0 and merged["AP50_summary"]["max"] == 23.0
    assert merged["AP50_summary"]["mean"] == pytest.approx(22.0) and merged["macs"] == 1e8
