"""The peer libraries' equivalents of a zoo model, for side-by-side benchmarks.

Same architecture, random weights (speed does not depend on them): timm for classifiers
(``efficientnet_b0``, ``tf_efficientnet_lite1``, ``mixnet_s``, ...), torchvision for its own
EfficientNets, effdet for EfficientDet networks (the pure network, pre-NMS, as effml's).
"""

from __future__ import annotations

from torch import nn

from effml.errors import InputError

PEERS = ("timm", "torchvision", "effdet")


def peer_model(name: str, library: str) -> nn.Module:
    """``library``'s model of the zoo name ``name``, in eval mode on the CPU."""
    if library not in PEERS:
        raise InputError(f"--compare {library!r} is unknown; choose from {', '.join(PEERS)}")
    try:
        module = __import__(library)
    except ImportError:
        raise InputError(f"--compare {library} needs the {library} package: pip install {library}") from None
    try:
        if library == "timm":
            return module.create_model(name, pretrained=False).eval()
        if library == "torchvision":
            return module.models.get_model(name, weights=None).eval()
        from effdet import create_model

        # pretrained_backbone=False: effdet would download the backbone otherwise
        return create_model(name, bench_task="", pretrained=False, pretrained_backbone=False).eval()
    except (RuntimeError, ValueError, KeyError) as e:
        raise InputError(f"{library} has no model {name!r} ({e}); compare a model both libraries have "
                         f"(timm: EfficientNet/MixNet/Lite, torchvision: efficientnet_b0-b7, "
                         f"effdet: tf_efficientdet_d0-d7, efficientdet_d0-d1)") from None
