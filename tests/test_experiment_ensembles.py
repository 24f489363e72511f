"""experiments/ensembles.py --quick, run as a user runs it: result rows, MACs bookkeeping, the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from _experiment import run_quick

import effml
from effml.models import Ensemble
from effml.models.counting import count_macs
from effml.zoo import spec_from_json


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("ensembles")
    stdout, results = run_quick("ensembles", out)
    return out, results, stdout


def _rebuilt(run_dir: str) -> nn.Module:
    """The trained network of a run, rebuilt from its model.json on the meta device."""
    spec = spec_from_json((Path(run_dir) / "model.json").read_text())
    with torch.device("meta"):
        return effml.create_model(spec)


def test_results_have_member_ensemble_and_big_rows(quick):
    _, res, stdout = quick
    k = res["settings"]["k"]
    assert k == 2 and len(res["members"]) == k
    assert [e["size"] for e in res["ensembles"]] == list(range(1, k + 1))
    assert res["ensemble"] == res["ensembles"][-1]
    for r in [*res["members"], *res["ensembles"], res["big"]]:
        assert r["params"] > 0 and r["macs"] > 0
        assert 0.0 <= r["top1"] <= 100.0 and r["count"] == 359  # the whole digits val split
    # An ensemble of one member predicts exactly what that member predicts.
    assert res["ensembles"][0]["top1"] == res["members"][0]["top1"]
    assert res["members"][0]["seed"] != res["members"][1]["seed"]
    assert "ensemble of 2" in stdout and "big" in stdout


def test_ensemble_macs_are_the_sum_of_its_members(quick):
    _, res, _ = quick
    size = res["settings"]["image_size"]
    models = [_rebuilt(m["run_dir"]) for m in res["members"]]
    member_macs = [count_macs(m, size) for m in models]
    assert member_macs == [m["macs"] for m in res["members"]]
    assert count_macs(Ensemble(models), size) == sum(member_macs) == res["ensemble"]["macs"]
    for e in res["ensembles"]:
        assert e["macs"] == sum(member_macs[:e["size"]])


def test_big_model_matches_the_ensemble_macs_within_tolerance(quick):
    _, res, _ = quick
    size, tol = res["settings"]["image_size"], res["settings"]["tolerance"]
    big_macs = count_macs(_rebuilt(res["big"]["run_dir"]), size)
    total = sum(count_macs(_rebuilt(m["run_dir"]), size) for m in res["members"])
    assert big_macs == res["big"]["macs"]
    assert big_macs > max(m["macs"] for m in res["members"])  # a genuinely larger network
    assert abs(big_macs / total - 1) <= tol
    assert res["big"]["macs_ratio"] == pytest.approx(big_macs / total)


def test_plot_is_a_nonempty_png(quick):
    out, _, _ = quick
    png = out / "ensembles.png"
    data = png.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temp files
