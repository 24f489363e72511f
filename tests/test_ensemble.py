"""Ensembles: the averaged prediction, summed cost, ONNX export."""

from __future__ import annotations

import pytest
import torch

import effml
from effml.deploy import export_onnx, onnx_session
from effml.errors import EffmlError
from effml.models import Ensemble
from effml.zoo import ensemble_from_specs
from effml.models.counting import count_macs, count_params
from effml.models.weights import save_weights
from effml.spec import NetworkSpec, parse_arch


def _tiny_spec() -> NetworkSpec:
    return NetworkSpec(
        stages=parse_arch([["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e2_c16_se0.25"]]),
        stem_channels=8, head_channels=32, num_classes=10, resolution=32,
    )


def _members() -> list[torch.nn.Module]:
    """Three members of different sizes, so a sum cannot be mistaken for a multiple."""
    torch.manual_seed(0)
    spec = _tiny_spec()
    members = [effml.create_model(spec), effml.create_model(effml.compound_scale(spec, 1.5, 2.0)),
               effml.create_model(spec)]
    for m in members:
        with torch.no_grad():
            m.classifier.weight.mul_(20)  # spread the logits so the two averaging modes differ
    return [m.eval() for m in members]


def test_probs_mode_is_log_of_mean_probability():
    members = _members()
    ens = Ensemble(members).eval()
    assert ens.mode == "probs" and len(ens) == 3 and ens.num_classes == 10
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = ens(x)
        mean_prob = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
    torch.testing.assert_close(out.exp(), mean_prob)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))
    torch.testing.assert_close(torch.softmax(out, 1), mean_prob)  # already normalised
    assert torch.equal(out.argmax(1), mean_prob.argmax(1))


def test_logits_mode_is_mean_of_logits():
    members = _members()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out = Ensemble(members, mode="logits").eval()(x)
        mean_logits = torch.stack([m(x) for m in members]).mean(0)
        probs_out = Ensemble(members, mode="probs").eval()(x)
    torch.testing.assert_close(out, mean_logits)
    # The modes are different rules: averaged logits are not log mean probabilities.
    assert not torch.allclose(torch.softmax(out, 1), probs_out.exp(), atol=1e-3)


def test_cost_of_an_ensemble_is_the_sum_of_its_members():
    members = _members()
    ens = Ensemble(members)
    macs = [count_macs(m, 32) for m in members]
    assert macs[0] != macs[1]
    assert count_macs(ens, 32) == sum(macs)
    assert count_params(ens) == sum(count_params(m) for m in members)


def test_ensemble_exports_to_onnx(tmp_path):
    ens = Ensemble(_members()[:2])
    report = export_onnx(ens, tmp_path / "ens.onnx", input_size=32)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-4
    assert report.output_names == ("logits",)
    x = torch.randn(3, 3, 32, 32)
    (got,) = onnx_session(report.path).run(None, {"input": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), ens.eval()(x), atol=1e-4, rtol=1e-4)


def test_ensemble_from_specs_loads_each_members_weights(tmp_path):
    torch.manual_seed(0)
    spec = _tiny_spec()
    donor = effml.create_model(spec)
    path = save_weights(donor, tmp_path / "member0.safetensors")
    ens = ensemble_from_specs([spec, spec], num_classes=10, weights=[path, None], mode="logits")
    assert ens.mode == "logits" and len(ens) == 2
    sd0, sd1, ref = ens.members[0].state_dict(), ens.members[1].state_dict(), donor.state_dict()
    assert all(torch.equal(sd0[k], ref[k]) for k in ref)
    assert not torch.equal(sd1["classifier.weight"], ref["classifier.weight"])  # own random init
    assert ensemble_from_specs([spec], num_classes=5).num_classes == 5


def test_ensemble_rejects_bad_arguments():
    spec = _tiny_spec()
    with pytest.raises(EffmlError, match="at least one"):
        Ensemble([])
    with pytest.raises(EffmlError, match="mode"):
        Ensemble([effml.create_model(spec)], mode="vote")  # type: ignore[arg-type]
    with pytest.raises(EffmlError, match="different numbers of classes"):
        Ensemble([effml.create_model(spec), effml.create_model(spec, num_classes=5)])
    with pytest.raises(EffmlError, match="one path"):
        ensemble_from_specs([spec, spec], num_classes=10, weights=[None])
    with pytest.raises(EffmlError, match="list"):
        ensemble_from_specs(spec, num_classes=10)  # type: ignore[arg-type]
