"""Parameter and MAC counting."""

from __future__ import annotations

import pytest
from torch import nn

from effml.models.counting import count_macs, count_params
from effml.zoo import profile_model


def test_count_params_and_macs_of_a_conv():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))
    assert count_params(net) == 3 * 8 * 9 + 8 + 512 * 10 + 10
    assert count_macs(net, 8) == 8 * 8 * 8 * 3 * 9 + 512 * 10


@pytest.mark.parametrize(("name", "params_m", "macs_g"), [
    ("efficientnet_b1", 7.8, 0.70),  # paper Table 2
    ("mixnet_m", 5.0, 0.36),  # MixNet paper; FlopCounterMode skips the elementwise ops
])
def test_profile_on_meta_device_matches_papers(name, params_m, macs_g):
    p = profile_model(name)
    assert p.params / 1e6 == pytest.approx(params_m, rel=0.02)
    assert p.macs / 1e9 == pytest.approx(macs_g, rel=0.07)
    assert profile_model(name, macs=False).macs is None
