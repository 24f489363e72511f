"""The training configuration: one documented schema, YAML files, ``key=value`` overrides.

Every field is documented here and nowhere else (``effml train --show-config`` prints them).
A config file is validated: an unknown or mistyped key, or a value of the wrong type, is an
error that names the key. The resolved config is saved beside the run as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from effml.errors import EffmlError


class ConfigError(EffmlError, ValueError):
    """A config file or override is invalid."""


@dataclass
class ModelConfig:
    """Which network to train."""

    name: str = "efficientnet_b0"  # a zoo name (`effml models`) or a spec JSON file
    num_classes: int | None = None  # default: the dataset's number of classes
    weights: str | None = None  # initial weights (path); never downloaded
    drop_classifier: bool = False  # load `weights` without their classifier (other class count)
    dropout: float | None = None  # before the classifier; default: the spec's (paper table)
    drop_path: float | None = None  # stochastic depth rate; TF recipe: 0.2 (survival 0.8)
    bn_momentum: float | None = None  # PyTorch convention; TF recipe: 0.01 (decay 0.99)
    bn_eps: float | None = None  # default: the spec's (1e-3 for tf_*, 1e-5 otherwise)
    freeze_bn: bool = False  # keep BatchNorm statistics frozen (eval mode) while training


@dataclass
class DataConfig:
    """Where images come from and how they are augmented."""

    # digits: scikit-learn's 8x8 digits (embedded); folder: ImageFolder classes; detection:
    # shapes (embedded synthetic COCO-format set, generated once and cached) or coco (COCO json)
    dataset: Literal["digits", "folder", "shapes", "coco"] = "digits"
    root: str | None = None  # folder: root/train, root/val class sub-folders; coco: see train_split
    # coco: images in root/<split>/, annotations in root/<split>/annotations.json or
    # root/annotations/instances_<split>.json (the COCO 2017 layout: train2017, val2017)
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 64  # training and evaluation input size (px)
    batch_size: int = 64  # per process; the global batch is this x world size
    eval_batch_size: int | None = None  # default: batch_size
    workers: int = 0  # DataLoader worker processes
    augment: Literal["none", "basic", "randaugment", "autoaugment"] = "basic"
    randaugment_ops: int = 2  # RandAugment N
    randaugment_magnitude: int = 9  # RandAugment M
    mixup: float = 0.0  # mixup alpha (0 = off)
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    on_corrupt: Literal["skip", "error"] = "skip"  # an unreadable image: skip and count, or stop
    limit_train: int | None = None  # use only the first N training images (quick runs)
    # held-out images are drawn by train.seed, excluded from training and read with the eval
    # transform; the validation set stays untouched for the final report
    holdout: float = 0.0  # fraction of the training images held out for search rewards (0 = off)

    def __post_init__(self) -> None:
        """Range checks of the fields above."""
        if self.holdout < 0 or not self.holdout < 1:
            raise ConfigError(f"data.holdout: {self.holdout} is not a fraction in [0, 1); "
                              f"e.g. data.holdout=0.1 holds out 10% of the training images")


@dataclass
class OptimConfig:
    """Optimizer (EfficientNet: RMSProp decay 0.9, momentum 0.9, eps 1e-3, lr 0.016 per 256)."""

    name: Literal["rmsprop_tf", "sgd", "adamw"] = "rmsprop_tf"
    lr: float = 0.016  # for the global batch; scale linearly with batch size (0.016 x B / 256)
    momentum: float = 0.9  # rmsprop_tf and sgd
    decay: float = 0.9  # rmsprop_tf: moving-average decay of squared gradients
    eps: float = 1e-3  # rmsprop_tf: added inside the square root, as in TF
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    weight_decay: float = 1e-5  # never applied to BatchNorm parameters or biases
    nesterov: bool = False  # sgd
    grad_clip: float | None = None  # clip the global gradient norm to this value


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped every optimizer step."""

    name: Literal["exponential", "cosine", "constant"] = "exponential"
    warmup_epochs: float = 0.0  # linear warm-up from warmup_lr_factor * lr (TF recipe: 5)
    warmup_lr_factor: float = 0.0
    decay_rate: float = 0.97  # exponential: multiply by this every decay_epochs
    decay_epochs: float = 2.4
    min_lr_factor: float = 0.0  # cosine: final lr as a fraction of lr


@dataclass
class TrainConfig:
    """The loop: length, loss, EMA, checkpoints, devices."""

    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (quick runs, tests)
    label_smoothing: float = 0.1
    ema_decay: float | None = 0.9999  # EMA of weights (None = off); decay warms up as (1+n)/(10+n)
    seed: int = 0
    deterministic: bool = False  # torch deterministic algorithms (slower)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = False
    amp: bool = False  # bfloat16 autocast on CPU, float16 on CUDA
    sync_bn: bool = False  # SyncBatchNorm under DDP (CUDA only: a torch limitation)
    log_interval: int = 10  # steps between metric rows
    checkpoint_interval: int | None = None  # steps between mid-epoch checkpoints (None: epochs only)
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    threads: int | None = None  # torch intra-op threads


@dataclass
class AdvPropConfig:
    """AdvProp (Xie et al., CVPR 2020): adversarial examples through auxiliary BatchNorms."""

    enabled: bool = False
    epsilon: float = 1.0  # L-inf radius in 0-255 pixel units (paper: 1-4, larger for larger models)
    step_size: float = 1.0  # pixel units per PGD step (paper: 1)
    steps: int | None = None  # default: epsilon + 1, or 1 when epsilon == 1 (paper)


@dataclass
class DistillConfig:
    """Knowledge distillation from a teacher (any effml model with weights)."""

    teacher: str | None = None  # zoo name or spec JSON; None = off
    teacher_weights: str | None = None
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft-target loss; 1 - alpha on the labels
    cache: bool = False  # cache the teacher's logits per training image


@dataclass
class DetectConfig:
    """Detection recipe (EfficientDet, google/automl ``hparams_config.py``); used by detection models."""

    scale_range: tuple[float, float] = (0.1, 2.0)  # training scale jitter of the long side
    hflip: float = 0.5  # horizontal flip probability
    fill: Literal["mean", "black"] = "mean"  # padding colour; automl pads with the mean (0 after normalising)
    focal_alpha: float = 0.25
    focal_gamma: float = 1.5
    huber_delta: float = 0.1
    box_loss_weight: float = 50.0
    label_smoothing: float = 0.0  # on the focal loss targets
    match_threshold: float = 0.5  # anchor IoU for a positive (every box also gets its best anchor)
    max_candidates: int = 5000  # (anchor, class) pairs kept before NMS
    iou_threshold: float = 0.5  # class-aware NMS
    soft_nms_sigma: float | None = None  # gaussian soft-NMS instead of hard NMS (automl eval: 0.5)
    max_detections: int = 100  # per image
    eval_backend: Literal["pycocotools", "faster-coco-eval"] = "pycocotools"
    shapes_train: int = 512  # data.dataset=shapes: number of generated training images
    shapes_val: int = 128
    shapes_classes: int = 3  # 1..4 of circle, square, triangle, star
    shapes_size: int = 192  # long side of the generated images (px)


@dataclass
class RunConfig:
    """Where the run lives."""

    dir: str = "runs/default"  # created if missing; resume with `effml train --resume DIR`
    keep_checkpoints: int = 1  # the last good checkpoint is always kept


@dataclass
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


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert: int -> float, list -> tuple) ``value`` against type ``tp``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
    if origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r} "
                      f"({type(value).__name__})")


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}.{hint} Known keys: {', '.join(known)}")


def _merge(section: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = _hints(type(section))
    known = [f.name for f in dataclasses.fields(section)]
    changes = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown(str(key), known, where)
        sub = getattr(section, key)
        name = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(sub):
            changes[key] = _merge(sub, value, name)
        else:
            changes[key] = _coerce(value, hints[key], name)
    return dataclasses.replace(section, **changes)


def config_from_dict(data: dict[str, Any], base: Config | None = None, source: str = "") -> Config:
    """A validated config: ``data`` merged over ``base`` (defaults when None)."""
    try:
        return _merge(base or Config(), data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source else str(e)) from None


def load_config(path: str | Path | None, overrides: list[str] = (), base: Config | None = None) -> Config:
    """Read a YAML config (optional) and apply ``section.key=value`` overrides (YAML values)."""
    config = base or Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        config = config_from_dict(data, config, source=str(p))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: write it as section.key=value, e.g. train.epochs=5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        nested: dict[str, Any] = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        config = config_from_dict(nested, config, source=f"override {item!r}")
    return config


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


def describe_config() -> str:
    """Every field with its type, default and comment, read from this module's source."""
    import inspect

    lines = []
    for f in dataclasses.fields(Config):
        cls = type(getattr(Config(), f.name))
        lines.append(f"{f.name}:  # {inspect.getdoc(cls)}")
        src = inspect.getsource(cls).splitlines()
        for line in src:
            s = line.strip()
            if ":" in s and not s.startswith(('"', "class", "#", "@")) and "=" in s:
                lines.append("  " + s)
    return "\n".join(lines)
