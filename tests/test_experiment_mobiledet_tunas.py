"""experiments/mobiledet_tunas.py --quick, run as a user runs it: a TuNAS search per space on the
shapes set, each found detector and the reference trained alone, and the per-space table."""

from __future__ import annotations

import json

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
