"""The one spec codec and the spec-kind registry: every zoo model round-trips through JSON and builds
the same state_dict as before the core refactor; bad JSON is an error that names the key's path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import effml
from effml.errors import SpecError
from effml.models.efficientnet import efficientnet_b0_spec
from effml.spec import from_dict, to_dict
from effml.zoo import KINDS, create_model, resolve_spec, spec_from_dict, spec_from_json, spec_kind, spec_to_dict, spec_to_json

SIGNATURES = json.loads((Path(__file__).parent / "data" / "state_dict_signatures.json").read_text())["models"]
ALL = effml.list_models()


def _signature(model: torch.nn.Module) -> str:
    sig = sorted((k, list(v.shape)) for k, v in model.state_dict().items())
    return hashlib.sha256(json.dumps(sig).encode()).hexdigest()[:16]


def test_the_recorded_signatures_cover_the_whole_zoo():
    assert len(ALL) == 82 and sorted(SIGNATURES) == ALL


@pytest.mark.parametrize("name", ALL)
def test_every_zoo_spec_round_trips_and_builds_the_same_state_dict(name):
    spec = effml.get_entry(name).spec()
    text = spec_to_json(spec)
    again = spec_from_json(text)
    assert again == spec and type(again) is type(spec)
    assert json.loads(text)["kind"] == spec_kind(spec).tag
    with torch.device("meta"):
        model = create_model(again)
    assert _signature(model) == SIGNATURES[name]["sha256_16"], f"{name}: state_dict keys/shapes changed"


def test_kinds_name_their_task_and_every_entry_agrees():
    assert {k.tag for k in KINDS} == {"efficientnet", "spinenet_classifier", "efficientdet", "retinanet", "ssdlite"}
    for name in ALL:
        entry = effml.get_entry(name)
        assert spec_kind(entry.spec()).task == entry.task, name


def test_network_stages_are_written_in_block_notation():
    data = spec_to_dict(efficientnet_b0_spec())
    assert data["kind"] == "efficientnet"
    assert data["stages"][1] == ["ir_r2_k3_s2_e6_c24_se0.25"]
    assert from_dict(type(efficientnet_b0_spec()), to_dict(efficientnet_b0_spec())) == efficientnet_b0_spec()


def test_errors_name_the_path_of_the_key():
    data = spec_to_dict(resolve_spec("tf_efficientdet_d0"))
    with pytest.raises(SpecError, match=r"unknown key 'fpn\.widht'"):
        spec_from_dict({**data, "fpn": {**data["fpn"], "widht": 64}})
    fpn = dict(data["fpn"])
    del fpn["width"]
    with pytest.raises(SpecError, match=r"missing required key 'fpn\.width'"):
        spec_from_dict({**data, "fpn": fpn})
    bad_stage = json.loads(json.dumps(data))
    bad_stage["backbone"]["stages"][3][0] = "ir_r3_k3_s2_e6"  # no channels
    with pytest.raises(SpecError, match=r"backbone\.stages\[3\]\[0\]: .*output channels"):
        spec_from_dict(bad_stage)
    wrong_type = {**data, "anchors": {**data["anchors"], "num_scales": "3"}}
    with pytest.raises(SpecError, match=r"anchors\.num_scales: expected int, got str"):
        spec_from_dict(wrong_type)
    with pytest.raises(SpecError, match=r"nodes\[0\]\.inputs\[1\]: expected int"):
        spec_from_dict({**data, "fpn": {**data["fpn"], "nodes": [{"level": 6, "inputs": [3, 4.5]}]}})
    with pytest.raises(SpecError, match="no 'kind' key"):
        spec_from_dict({k: v for k, v in data.items() if k != "kind"})
    with pytest.raises(SpecError, match="unknown spec kind 'effdet'"):
        spec_from_dict({**data, "kind": "effdet"})
    with pytest.raises(SpecError, match=r"my.json: not valid JSON"):
        spec_from_json("{", source="my.json")


def test_load_spec_names_a_missing_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        effml.load_spec(tmp_path / "nope.json")
    path = tmp_path / "b0.json"
    path.write_text(spec_to_json(efficientnet_b0_spec()))
    assert effml.load_spec(path) == efficientnet_b0_spec()


def test_one_override_rule_for_every_spec():
    # A plain spec: its own fields; an unknown one is an error naming it.
    assert resolve_spec("efficientnet_b0", resolution=160, num_classes=10).resolution == 160
    with pytest.raises(SpecError, match="no field 'widht'"):
        resolve_spec("efficientnet_b0", widht=1.1)
    # A composite: its own fields, backbone fields routed, BN settings to both.
    det = resolve_spec("tf_efficientdet_d0", resolution=256, drop_path=0.1, bn_momentum=0.05, num_classes=3)
    assert (det.resolution, det.num_classes, det.bn_momentum) == (256, 3, 0.05)
    assert (det.backbone.drop_path, det.backbone.bn_momentum) == (0.1, 0.05)
    cls = resolve_spec("spinenet49_cls", dropout=0.3, drop_path=0.1, resolution=128)
    assert (cls.dropout, cls.backbone.drop_path, cls.resolution) == (0.3, 0.1, 128)
    with pytest.raises(SpecError, match="no setting 'widht'"):
        resolve_spec("ssdlite_mobiledet_cpu", widht=2)
    assert resolve_spec("ssdlite_mobiledet_cpu", in_channels=1).in_channels == 1
