"""The named search spaces: MnasNet's, MobileDets', a MixNet kernel space and EfficientNet's
compound-coefficient grid, each a ``SearchSpace`` over a base spec built here, and SpineNet's
scale-permuted block tables (``effml.search.spaces.scale_permuted``); ``space_for`` names one or
reads a space file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from effml.errors import SearchError
from effml.search.spaces.scale_permuted import spinenet_space
from effml.search.spaces.search_space import Choice, HyperChoice, SearchSpace, Space, compound_grid, space_from_dict
from effml.spec import BlockSpec, NetworkSpec

# MobileNetV2 (Sandler et al., arXiv 1801.04381, Table 2): expansion t, filters c, repeats n,
# stride s per block; MnasNet searches relative to it (arXiv 1807.11626, section 4.1).
MOBILENET_V2_ROWS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                     (6, 160, 3, 2), (6, 320, 1, 1))


def mnasnet_space(num_classes: int = 1000, resolution: int = 224, in_channels: int = 3) -> SearchSpace:
    """MnasNet's factorized hierarchical space as Google released it
    (google/vertex-ai-nas ``nas_architecture/tunable_mnasnet_search_space.py``): 7 blocks over
    MobileNetV2; per block conv or MBConv, expansion {1, 3, 6}, kernel {3, 5}, SE {0, 0.25},
    output filters {int(0.75 c), c, int(1.25 c)}, repeats {n - 1, n, n + 1} ({1, 2} when n = 1):
    216 choices per block (144 where n = 1).

    The paper's "regular conv" op is the fused IBN (``er``: a full kxk conv expands, 1x1
    projects), as in EfficientNet-EdgeTPU; the paper's skip choice (pooling / identity / none)
    is not in the released space and not here: a block has its residual when shapes allow.
    """
    rows = tuple((BlockSpec("ir", c, repeats=n, stride=s, expand_ratio=t),) for t, c, n, s in MOBILENET_V2_ROWS)
    base = NetworkSpec(rows, stem_channels=32, head_channels=1280, num_classes=num_classes,
                       in_channels=in_channels, act="relu", resolution=resolution, bn_eps=1e-3)
    choices = []
    for i, (_t, c, n, _s) in enumerate(MOBILENET_V2_ROWS):
        choices += [
            Choice("kind", ("ir", "er"), i, 0),
            Choice("expand_ratio", (1.0, 3.0, 6.0), i, 0),
            Choice("kernel_size", (3, 5), i, 0),
            Choice("se_ratio", (0.0, 0.25), i, 0),
            Choice("out_channels", (int(0.75 * c), c, int(1.25 * c)), i, 0),
            Choice("repeats", (-1, 0, 1) if n > 1 else (0, 1), i, 0),
        ]
    return SearchSpace("mnasnet", base, tuple(choices))


# MobileDets' layer operations (arXiv 2004.14525): IBN (``ir``), fused IBN (``er``), Tucker
# convolution (``tucker``). The paper searches three nested spaces, IBN, IBN+Fused and
# IBN+Fused+Tucker; ``mobiledet_ibn`` and ``mobiledet_ibn_fused`` are the first two.
MOBILEDET_OPS = ("ir", "er", "tucker")


def mobiledet_space(num_classes: int = 1000, resolution: int = 320, in_channels: int = 3,
                    ops: tuple[str, ...] = MOBILEDET_OPS, name: str = "mobiledet") -> SearchSpace:
    """The MobileDets IBN + fused IBN + Tucker space (Xiong et al., arXiv 2004.14525, section 4):
    per searchable layer an IBN (expansion {4, 8}, kernel {3, 5}), a fused IBN (the same) or a
    Tucker convolution (input and output compression {0.25, 0.75}, kernel 3); ``ops`` restricts
    the operations (``MOBILEDET_OPS``).

    The macro structure (strides, widths, residuals) is MobileDet-DSP's (tensorflow/models
    ``ssd_mobiledet_feature_extractor.py``, ``mobiledet_dsp_backbone``), one row per layer; its
    first layer (a depthwise-separable conv) is fixed. The paper's per-layer width multipliers
    and layer skipping are not included: their values are not stated in the public sources.
    """
    from effml.detection.mobiledet import MOBILEDET_TABLES

    unknown = [op for op in ops if op not in MOBILEDET_OPS]
    if unknown or not ops:
        raise SearchError(f"space {name!r}: ops {list(ops)} must be a non-empty subset of {list(MOBILEDET_OPS)}")
    ops = tuple(op for op in MOBILEDET_OPS if op in ops)
    ibn = tuple(op for op in ops if op in ("ir", "er"))
    table = MOBILEDET_TABLES["dsp"]
    stages, choices = [], []
    for s, endpoint in enumerate(table.endpoints):
        rows = []
        for r, layer in enumerate(endpoint):
            if s == 0:
                rows.append(BlockSpec("ds", layer.filters, kernel_size=(3,), stride=layer.stride,
                                      skip=layer.residual))
                continue
            rows.append(BlockSpec(ops[0], layer.filters, kernel_size=(3,), stride=layer.stride,
                                  expand_ratio=4.0 if ibn else 1.0, skip=layer.residual,
                                  **({} if ibn else {"input_compression": 0.25, "output_compression": 0.25})))
            if len(ops) > 1:
                choices.append(Choice("kind", ops, s, r))
            if ibn:
                choices += [Choice("expand_ratio", (4.0, 8.0), s, r, kinds=ibn),
                            Choice("kernel_size", (3, 5), s, r, kinds=ibn)]
            if "tucker" in ops:
                choices += [Choice("input_compression", (0.25, 0.75), s, r, kinds=("tucker",)),
                            Choice("output_compression", (0.25, 0.75), s, r, kinds=("tucker",))]
        stages.append(tuple(rows))
    base = NetworkSpec(tuple(stages), stem_channels=table.stem, head_channels=1280, num_classes=num_classes,
                       in_channels=in_channels, act=table.act, resolution=resolution, bn_eps=0.01,
                       bn_momentum=0.01)
    return SearchSpace(name, base, tuple(choices))


def mobiledet_ibn_space(num_classes: int = 1000, resolution: int = 320, in_channels: int = 3) -> SearchSpace:
    """The MobileDets space restricted to IBN layers (the paper's IBN-only baseline space)."""
    return mobiledet_space(num_classes, resolution, in_channels, ops=("ir",), name="mobiledet_ibn")


def mobiledet_ibn_fused_space(num_classes: int = 1000, resolution: int = 320, in_channels: int = 3) -> SearchSpace:
    """The MobileDets space with IBN and fused IBN layers, no Tucker convolutions."""
    return mobiledet_space(num_classes, resolution, in_channels, ops=("ir", "er"), name="mobiledet_ibn_fused")


# MixNet (Tan & Le, arXiv 1907.09595, section 4.1): a MixConv with 1-4 channel groups whose
# kernels grow as 3x3, 5x5, 7x7, 9x9.
MIXNET_KERNELS = ((3,), (3, 5), (3, 5, 7), (3, 5, 7, 9))


def mixnet_kernel_space(num_classes: int = 1000, resolution: int = 224, in_channels: int = 3) -> SearchSpace:
    """MixNet-S with the MixConv kernel groups of every MBConv row searched."""
    from effml.models.mixnet import mixnet_spec

    base = mixnet_spec("s").replace(num_classes=num_classes, resolution=resolution, in_channels=in_channels)
    choices = tuple(Choice("kernel_size", MIXNET_KERNELS, s, r)
                    for s, stage in enumerate(base.stages) for r, b in enumerate(stage) if b.kind == "ir")
    return SearchSpace("mixnet_kernels", base, choices)


def efficientnet_compound_space(num_classes: int = 1000, resolution: int = 224,
                                in_channels: int = 3) -> SearchSpace:
    """EfficientNet's compound-coefficient grid (arXiv 1905.11946, section 3.3: phi = 1, alpha *
    beta^2 * gamma^2 ~= 2, step 0.05) over B0; the paper found alpha 1.2, beta 1.1, gamma 1.15."""
    from effml.models.efficientnet import efficientnet_b0_spec

    base = efficientnet_b0_spec().replace(
        num_classes=num_classes, resolution=resolution, in_channels=in_channels)
    return SearchSpace("efficientnet_compound", base, (Choice("compound", compound_grid()),))


# BigNAS's space (Yu et al., arXiv 2003.11142, Table 1; the same table in xfey/pytorch-BigNAS
# configs/train.yaml): per stage (block kind, output channels, depth range, kernels, stride); every
# MBConv expands 6x with SE and swish; stem 32-40, head 1280-1408, input 192-320. ``bignas_space``
# scales it down: widths halved (multiples of 8), depth ranges shortened for small inputs.
BIGNAS_ROWS = (
    ("ds", (16, 24), (1, 2), (3,), 1), ("ir", (24, 32), (2, 3), (3,), 2), ("ir", (40, 48), (2, 3), (3, 5), 2),
    ("ir", (80, 88), (2, 4), (3, 5), 2), ("ir", (112, 120, 128), (2, 6), (3, 5), 1),
    ("ir", (192, 200, 208, 216), (2, 6), (3, 5), 2), ("ir", (320, 328, 336, 344, 352), (1, 2), (3, 5), 1),
)
# The scaled-down rows used by ``bignas_space``: (kind, widths, (min, max) depth, kernels, stride).
BIGNAS_SMALL_ROWS = (
    ("ds", (8, 16), (1, 2), (3,), 1), ("ir", (16, 24), (1, 2), (3,), 2), ("ir", (24, 32), (1, 2), (3, 5), 2),
    ("ir", (40, 48), (1, 3), (3, 5), 2), ("ir", (56, 64), (1, 3), (3, 5), 1),
    ("ir", (96, 112), (1, 3), (3, 5), 2), ("ir", (160, 176), (1, 1), (3, 5), 1),
)


def bignas_space(num_classes: int = 1000, resolution: int = 32, in_channels: int = 3) -> SearchSpace:
    """BigNAS's elastic space scaled down for small images (``BIGNAS_SMALL_ROWS``): per stage the
    output width, the depth (the first d blocks), the depthwise kernel and the expansion {4, 6};
    stem 16/24, head 640/704 channels; input resolution {0.75, 0.875, 1} x ``resolution``
    (BigNAS: 192-320, 0.6-1x). Every member is a child of the largest: a supernet slices it."""
    rows, choices = [], []
    for s, (kind, widths, (low, high), kernels, stride) in enumerate(BIGNAS_SMALL_ROWS):
        ir = kind == "ir"
        rows.append((BlockSpec(kind, max(widths), repeats=high, kernel_size=max(kernels), stride=stride,
                               expand_ratio=6.0 if ir else 1.0, se_ratio=0.25),))
        choices.append(Choice("out_channels", widths, s, 0))
        if high > low:
            choices.append(Choice("repeats", tuple(range(low - high, 1)), s, 0))
        if len(kernels) > 1:
            choices.append(Choice("kernel_size", kernels, s, 0))
        if ir:
            choices.append(Choice("expand_ratio", (4.0, 6.0), s, 0))
    resolutions = tuple(sorted({max(8, int(round(resolution * f / 4)) * 4) for f in (0.75, 0.875, 1.0)}))
    choices += [Choice("resolution", resolutions), Choice("stem_channels", (16, 24)),
                Choice("head_channels", (640, 704))]
    base = NetworkSpec(tuple(rows), stem_channels=24, head_channels=704, num_classes=num_classes,
                       in_channels=in_channels, act="swish", resolution=resolution)
    return SearchSpace("bignas", base, tuple(choices))


# AutoHAS's joint space at small scale (arXiv 2006.03656 searches a MobileNetV2-based space with
# its training hyper-parameters): rows (output channels, maximum depth, stride) of a MobileNetV2-
# like network for 28-32 px inputs, each MBConv row with elastic kernel {3, 5}, expansion {3, 6}
# and depth; the hyper-parameters every AutoHAS step can change (``joint_space.STEP_HYPER``).
AUTOHAS_ROWS = ((24, 2, 2), (40, 2, 2), (80, 2, 2), (112, 1, 1))
AUTOHAS_HYPER = (
    HyperChoice("optim.name", "categorical", ("sgd", "adamw")),
    HyperChoice("optim.lr", "float", low=3e-3, high=0.1, log=True),
    HyperChoice("optim.weight_decay", "float", low=1e-5, high=1e-3, log=True),
    HyperChoice("train.label_smoothing", "float", low=0.0, high=0.2),
    HyperChoice("data.mixup", "float", low=0.0, high=0.4),
    HyperChoice("model.dropout", "float", low=0.0, high=0.4),
)


def autohas_space(num_classes: int = 10, resolution: int = 32, in_channels: int = 3) -> SearchSpace:
    """A small MobileNetV2-like elastic space (``AUTOHAS_ROWS``) with the training hyper-parameters
    (``AUTOHAS_HYPER``: optimizer, learning rate, weight decay, label smoothing, mixup, dropout):
    the joint space of ``effml autohas`` and, sampled continuously, of its random and TPE baselines."""
    rows = [(BlockSpec("ds", 16, kernel_size=(3,), stride=1),)]
    choices = []
    for s, (c, depth, stride) in enumerate(AUTOHAS_ROWS, start=1):
        rows.append((BlockSpec("ir", c, repeats=depth, kernel_size=(5,), stride=stride, expand_ratio=6.0),))
        choices += [Choice("kernel_size", (3, 5), s, 0), Choice("expand_ratio", (3.0, 6.0), s, 0)]
        if depth > 1:
            choices.append(Choice("repeats", (-1, 0), s, 0))
    base = NetworkSpec(tuple(rows), stem_channels=16, head_channels=320, num_classes=num_classes,
                       in_channels=in_channels, act="relu", resolution=resolution)
    return SearchSpace("autohas", base, tuple(choices), AUTOHAS_HYPER)


SPACES: dict[str, Callable[..., Space]] = {
    "autohas": autohas_space,
    "bignas": bignas_space,
    "mnasnet": mnasnet_space,
    "mobiledet": mobiledet_space,
    "mobiledet_ibn": mobiledet_ibn_space,
    "mobiledet_ibn_fused": mobiledet_ibn_fused_space,
    "mixnet_kernels": mixnet_kernel_space,
    "efficientnet_compound": efficientnet_compound_space,
    "spinenet": spinenet_space,
}


def named_space(name: str, **options: int) -> Space:
    """A named space (``SPACES``) for ``num_classes`` / ``resolution`` / ``in_channels``."""
    if name not in SPACES:
        raise SearchError(f"unknown search space {name!r}; named spaces are {sorted(SPACES)} "
                          "(or give a space file: .json or .yaml)")
    try:
        return SPACES[name](**options)
    except TypeError as err:
        raise SearchError(f"space {name!r}: {err}; options are num_classes, resolution, in_channels") from None


def space_for(name: str, num_classes: int, resolution: int) -> SearchSpace:
    """A named space or a space file (.json/.yaml) for ``num_classes`` classes at ``resolution``."""
    if name.endswith((".json", ".yaml", ".yml")):
        space = load_space(name)
        return SearchSpace(space.name, space.base.replace(num_classes=num_classes, resolution=resolution),
                           space.choices, space.hyper, space.phi)
    return named_space(name, num_classes=num_classes, resolution=resolution)


def load_space(path: str | Path) -> SearchSpace:
    """A space file (JSON or YAML, as ``SearchSpace.to_dict`` writes)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SearchError(f"space file {path} cannot be read ({err.strerror}); check the path") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SearchError(f"space file {path} is not valid {path.suffix[1:].upper()}: "
                          f"{' '.join(str(err).split())}") from None
    return space_from_dict(data, source=str(path))
