"""experiments/training_methods.py --quick, run as a user runs it: ensembles vs one big model and
AdvProp vs plain training on one recipe, results.json and the plot."""

from __future__ import annotations


from _experiment import run_quick


def test_quick_run_writes_sane_results_and_plot(tmp_path):
    stdout, res = run_quick("training_methods", tmp_path)
    k = res["settings"]["k"]
    assert k == 2 and res["member"]["seeds"] == [0, 1] and res["advprop"]["seeds"] == [0]
    # the ensemble costs k members; the big model was scaled to within 10% of that
    assert res["ensemble"]["macs"] == k * res["member"]["macs"]
    assert abs(res["big"]["macs"] / res["ensemble"]["macs"] - 1) <= 0.10
    for part in ("member", "ensemble", "big", "advprop"):
        assert all(0 <= x <= 100 for x in res[part]["top1"])
    plain = dict(zip(res["member"]["seeds"], res["member"]["top1"]))
    assert res["advprop_minus_plain"]["mean"] == res["advprop"]["top1"][0] - plain[0]
    # the AdvProp run trained with its auxiliary BatchNorms and the shared recipe
    saved = (tmp_path / "advprop_seed0" / "config.yaml").read_text()
    assert "enabled: true" in saved and "limit_train: 256" in saved
    assert (tmp_path / "training_methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "AdvProp - plain" in stdout
