"""Fidelity against timm (a reference we did not write): same parameter count, same state_dict
keys and shapes, and the same logits with timm's weights loaded, in both padding flavours."""

from __future__ import annotations

import pytest
import torch

import effml

timm = pytest.importorskip("timm")

ALL_MODELS = [n for n in effml.list_models(task="classify")  # the MBConv-family zoo (NetworkSpec)
              if isinstance(effml.get_entry(n).spec(), effml.spec.NetworkSpec)]
BIG = {"b6", "b7", "b8", "l2"}


def _is_big(name: str) -> bool:
    return name.rsplit("_", 1)[-1] in BIG


def _perturbed(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """timm's random init with non-trivial BN statistics and affine terms, so that logits are O(1)
    and a wrong padding, eps or wiring shows up far above the tolerance."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for key, t in state.items():
        if key.endswith("running_var"):
            out[key] = torch.rand(t.shape, generator=g) * 0.5 + 0.75
        elif key.endswith("running_mean"):
            out[key] = torch.randn(t.shape, generator=g) * 0.05
        elif key.endswith("bias") and t.ndim == 1:
            out[key] = torch.randn(t.shape, generator=g) * 0.05
    cls = out["classifier.weight"]
    out["classifier.weight"] = torch.randn(cls.shape, generator=g) * 0.5
    return out


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if not _is_big(n)] +
                         [pytest.param(n, marks=pytest.mark.slow) for n in ALL_MODELS if _is_big(n)])
def test_same_params_keys_and_logits_as_timm(name):
    torch.manual_seed(0)
    ref = timm.create_model(name).eval()
    ours = effml.create_model(name).eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    assert all(our_state[k].shape == ref_state[k].shape for k in ref_state)

    state = _perturbed(ref_state)
    ref.load_state_dict(state)
    ours.load_state_dict(state)  # strict: no mapping needed
    res = ours.spec.resolution
    # native (even) size exercises the statically padded path; odd size the dynamic one
    sizes = (res, res + 1) if res <= 300 else (96, 97)
    for size in sizes:
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected, got = ref(x), ours(x)
        assert expected.abs().max() > 0.1, "logits too small for the comparison to mean anything"
        assert (got - expected).abs().max().item() < 1e-4, f"{name} at {size}px"


def test_tf_flavour_really_differs_from_pytorch_flavour():
    # The guard above is only meaningful if padding and eps change the output.
    torch.manual_seed(0)
    a = effml.create_model("efficientnet_b0").eval()
    b = effml.create_model("tf_efficientnet_b0").eval()
    b.load_state_dict(_perturbed(a.state_dict()))
    a.load_state_dict(_perturbed(a.state_dict()))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max() > 1e-2
