"""Parameter counts and MACs against the papers' tables (EfficientNet arXiv 1905.11946 Table 2; MixConv arXiv 1907.09595).

The papers round and count slightly differently from torch.utils.flop_counter (convs and
matmuls only), so each model's measured gap is written down: a regression moves it.
"""

from __future__ import annotations

import pytest

from effml.zoo import profile_model

# name: (paper params M, paper MACs G, measured params gap %, measured MACs gap %)
# EfficientNet paper Table 2; EfficientNet-Lite TF lite/README.md; MixNet paper Table.
PAPER = {
    "efficientnet_b0": (5.3, 0.39, -0.22, -1.07),
    "efficientnet_b1": (7.8, 0.70, -0.07, -1.89),
    "efficientnet_b2": (9.2, 1.0, -0.98, -0.64),
    "efficientnet_b3": (12, 1.8, +1.94, +1.51),
    "efficientnet_b4": (19, 4.2, +1.80, +4.61),
    "efficientnet_b5": (30, 9.9, +1.30, +3.70),
    "efficientnet_b6": (43, 19, +0.09, +0.36),
    "efficientnet_b7": (66, 37, +0.53, +2.02),
    "efficientnet_lite0": (4.7, 0.407, -1.02, -5.36),
    "efficientnet_lite1": (5.4, 0.631, +0.31, -4.88),
    "efficientnet_lite2": (6.1, 0.899, -0.13, -4.37),
    "efficientnet_lite3": (8.2, 1.44, -0.04, -3.94),
    "efficientnet_lite4": (13.0, 2.64, +0.05, -3.29),
    "mixnet_s": (4.1, 0.256, +0.84, -6.57),
    "mixnet_m": (5.0, 0.360, +0.29, -5.79),
    "mixnet_l": (7.3, 0.565, +0.40, -1.73),
}


@pytest.mark.parametrize("name", sorted(PAPER))
@pytest.mark.parametrize("flavour", ["", "tf_"])
def test_params_and_macs_match_the_paper_tables(name, flavour):
    params_m, macs_g, params_gap, macs_gap = PAPER[name]
    prof = profile_model(flavour + name)  # at the model's own resolution
    got_params = (prof.params / 1e6 / params_m - 1) * 100
    got_macs = (prof.macs / 1e9 / macs_g - 1) * 100
    assert abs(got_params) < 2.0 and abs(got_macs) < 7.0
    assert got_params == pytest.approx(params_gap, abs=0.01)
    assert got_macs == pytest.approx(macs_gap, abs=0.01)
