"""A run directory: its files, read with checks (``run.json``, ``model.json``, ``config.yaml``), and a
finished run rebuilt as a model: spec, weights, class names and preprocessing.

A damaged or missing file is a ``RunDirError`` that names the file and says how to repair it:
while ``checkpoints/last.pt`` is kept, ``effml train --resume RUN`` rewrites a finished run's
outputs (weights, ``model.json``, ``run.json``) from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import nn

from effml.data.transforms import INTERPOLATIONS
from effml.detection.coco_eval import METRIC_NAMES
from effml.errors import EffmlError, WeightsError
from effml.files import atomic_write_text
from effml.models.weights import load_weights
from effml.spec.entry import Preprocess
from effml.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from effml.train.config import Config, config_from_dict, config_to_dict, load_config
from effml.train.tasks import task_for
from effml.zoo import load_spec

RUN_INFO, MODEL_JSON, CONFIG_YAML = "run.json", "model.json", "config.yaml"
# The eval interpolation of a run.json written before it was recorded: those runs evaluated bilinear.
UNRECORDED_INTERPOLATION = "bilinear"
# The unit of a run.json's accuracy metrics (top-1, COCO AP/AR), written into every new one. A
# detection run.json without it predates it and holds COCO AP/AR as fractions (top-1 was always %).
METRIC_UNIT = "percent"


class RunDirError(EffmlError):
    """A run directory's metadata is missing or damaged."""


WEIGHTS_RAW, WEIGHTS_EMA = "weights.safetensors", "weights_ema.safetensors"
WEIGHT_CHOICES = ("best", "ema", "raw")  # best: the EMA weights where the run kept them, else raw


class RunInfo(BaseModel):
    """``run.json``: what loading a finished run needs (weights, preprocessing, classes) and what it
    measured. Every writer goes through this schema; readers check the keys that loading needs."""

    model_config = ConfigDict(extra="allow")  # e.g. a supernet child's macs, params and supernet

    weights: Literal["weights.safetensors", "weights_ema.safetensors"]
    input_size: int = Field(gt=0)
    crop_pct: float = Field(gt=0)
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)
    interpolation: str = UNRECORDED_INTERPOLATION  # how evaluation resized the images
    classes: list[str] = Field(min_length=1)
    task: Literal["classify", "detect"] = "classify"
    category_ids: list[int] = []
    metric_unit: Literal["percent"] | None = None  # None: an older run.json (``metrics_in_percent``)

    @field_validator("interpolation")
    @classmethod
    def _known_interpolation(cls, value: str) -> str:
        if value not in INTERPOLATIONS:
            raise ValueError(f"{value!r} is not one of {', '.join(INTERPOLATIONS)}")
        return value


def shipped_weights(has_ema: bool) -> str:
    """The weights file a run ships: its EMA weights where it kept them, else the raw ones."""
    return WEIGHTS_EMA if has_ema else WEIGHTS_RAW


def weights_file(run_dir: Path, info: dict[str, Any], choice: str = "best") -> Path:
    """The weights file of a finished run for ``choice`` ('best' as run.json says, 'ema' or 'raw')."""
    files = {"best": info["weights"], "ema": WEIGHTS_EMA, "raw": WEIGHTS_RAW}
    if choice not in files:
        raise EffmlError(f"weights must be one of {sorted(files)}, got {choice!r}")
    return Path(run_dir) / files[choice]


def shipped_metrics(info: dict[str, Any], split: str = "val") -> dict[str, Any]:
    """The ``split`` ('val' or 'holdout') metrics of the weights a run ships (its EMA's where kept),
    accuracy in percent (``metrics_in_percent``)."""
    return metrics_in_percent(info, info[f"ema_{split}"] if info["weights"] == WEIGHTS_EMA else info[split])


def metrics_in_percent(info: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` of the run whose ``run.json`` is ``info`` (its val, holdout, or a row of its
    ``metrics.jsonl``) with COCO AP/AR in percent: a detection run.json with no ``metric_unit``
    was written when effml reported them as fractions, so they are scaled x100 here."""
    if not metrics or info.get("task") != "detect" or info.get("metric_unit") == METRIC_UNIT:
        return metrics
    return {k: 100 * v if (k in METRIC_NAMES or k.startswith("AP/")) and isinstance(v, (int, float)) else v
            for k, v in metrics.items()}


def preprocess_fields(preprocess: Preprocess) -> dict[str, Any]:
    """The ``run.json`` fields of the preprocessing a run evaluates with (``eval_preprocess``)."""
    return {"input_size": preprocess.input_size, "mean": list(preprocess.mean), "std": list(preprocess.std),
            "crop_pct": preprocess.crop_pct, "interpolation": preprocess.interpolation}


def write_run_info(run_dir: Path, **fields: Any) -> None:
    """Write ``run.json`` atomically, through the ``RunInfo`` schema (a bad field is a bug here)."""
    info = RunInfo.model_validate({**fields, "metric_unit": METRIC_UNIT}).model_dump(exclude_unset=True)
    atomic_write_text(Path(run_dir) / RUN_INFO, json.dumps(info, indent=2))


@dataclass
class TrainedModel:
    """A model rebuilt from a run directory, ready for predict / eval / export."""

    model: nn.Module
    spec: Any  # NetworkSpec, or a detector spec when task == "detect"
    preprocess: Preprocess
    classes: tuple[str, ...]
    weights_path: Path
    task: str = "classify"
    category_ids: tuple[int, ...] = ()  # detection: the annotation file's id of each class


def is_run_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory written by ``effml train``."""
    p = Path(path)
    return p.is_dir() and (p / RUN_INFO).is_file()


def repair_hint(run_dir: Path) -> str:
    """What a user can do about a run directory whose outputs are damaged."""
    if (run_dir / "checkpoints" / CHECKPOINT_NAME).is_file():
        return f"rewrite the run's outputs from its checkpoint with `effml train --resume {run_dir}`"
    return "its checkpoint is gone too, so train the run again (`effml train ... run.dir=NEW_DIR`)"


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a finished run, checked for the keys that loading it needs."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_INFO
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a finished run directory (no {RUN_INFO}); train it with "
                          f"`effml train`, or finish it with `effml train --resume {run_dir}`")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunDirError(f"{path} is not readable JSON ({e}); {repair_hint(run_dir)}") from None
    try:
        RunInfo.model_validate(info)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'top level'}: {err['msg']}"
                             for err in e.errors()[:4])
        raise RunDirError(f"{path} is damaged ({problems}); {repair_hint(run_dir)}") from None
    return info


def load_run(run_dir: str | Path, weights: str = "best") -> TrainedModel:
    """Rebuild a run's model; ``weights`` is 'best' (EMA when the run kept one), 'ema' or 'raw'."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    path = weights_file(run_dir, info, weights)
    try:
        spec = load_spec(run_dir / MODEL_JSON)
    except EffmlError as e:
        raise RunDirError(f"run {run_dir} has no usable {MODEL_JSON}: {e}; {repair_hint(run_dir)}") from None
    if not path.is_file():
        if weights == "best" or path.name == info["weights"]:
            raise RunDirError(f"{path} is missing although {run_dir / RUN_INFO} names it; "
                              f"{repair_hint(run_dir)}")
        raise EffmlError(f"{path} does not exist (this run kept no {weights} weights)")
    model = task_for(spec).build_model(spec)
    try:
        load_weights(model, path)
    except WeightsError as e:
        raise RunDirError(f"{e} (run {run_dir}: {repair_hint(run_dir)})") from None
    preprocess = Preprocess(info["input_size"], info["crop_pct"], tuple(info["mean"]), tuple(info["std"]),
                            info.get("interpolation", UNRECORDED_INTERPOLATION))
    return TrainedModel(model.eval(), spec, preprocess, tuple(info["classes"]), path,
                        info.get("task", "classify"), tuple(info.get("category_ids", ())))


# The sections effml writes into config.yaml, "run" last; a section added later may be absent from
# an older run's file, so only these are required.
_SAVED_SECTIONS = ("model", "data", "optim", "schedule", "train", "advprop", "distill", "detect", "run")


def _missing(data: dict[str, Any]) -> list[str]:
    """The sections (and ``run.dir``, written last) that a cut-short or hand-edited file lacks."""
    missing = [s for s in _SAVED_SECTIONS if not isinstance(data.get(s), dict)]
    if "run" not in missing and "dir" not in data["run"]:
        missing.append("run.dir")
    return missing


def read_run_config(run_dir: str | Path) -> Config:
    """A run's saved config: ``config.yaml`` (with every section, as effml writes it), or, when that
    file is missing, the copy of the config recorded in ``checkpoints/last.pt``."""
    import yaml

    run_dir = Path(run_dir)
    path = run_dir / CONFIG_YAML
    ckpt = run_dir / "checkpoints" / CHECKPOINT_NAME
    fallback = (f"delete it to resume with the copy of the config kept in {ckpt}" if ckpt.is_file()
                else "restore it from a copy of the run")
    if not path.is_file():
        if not run_dir.is_dir():
            raise RunDirError(f"{run_dir} does not exist: give a run directory written by `effml train`")
        if not ckpt.is_file():
            raise RunDirError(f"{path} is missing (and {run_dir} has no checkpoint that records the config): "
                              f"not a run directory written by `effml train`, or a damaged one; "
                              f"restore config.yaml from a copy of the run")
        state = load_checkpoint(ckpt)
        recorded = state.get("config") if isinstance(state, dict) else None
        if not isinstance(recorded, dict):
            raise RunDirError(f"{path} is missing and {ckpt} records no config; restore config.yaml "
                              f"from a copy of the run")
        return config_from_dict(recorded, source=f"the config recorded in {ckpt}", saved=True)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunDirError(f"{path} is not readable YAML ({first}); it is damaged: {fallback}") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} holds {type(data).__name__}, not the run's config sections; "
                          f"it is damaged: {fallback}")
    missing = _missing(data)
    if missing:
        raise RunDirError(f"{path} lacks {', '.join(missing)} (effml writes every section): it was cut short "
                          f"or edited; add them back, or {fallback}")
    return load_config(path, saved=True)


# ---------------------------------------------------------------- one writer at a time


class RunLockedError(EffmlError):
    """Another process is training into the run directory."""


class RunLock:
    """An OS file lock on ``RUN/.lock`` (the kernel drops it when the holder dies, so a killed run
    leaves no stale lock), with the holder's pid and host in ``RUN/.lock.owner`` for the message."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self.owner = self.run_dir / ".lock.owner"
        self._lock: Any = None

    def _holder(self) -> str:
        try:
            who = json.loads(self.owner.read_text())
            return f"pid {who['pid']} on host {who['host']}, since {who['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "owner unknown: it is just starting"

    def acquire(self) -> None:
        """Take the lock now, or raise ``RunLockedError`` naming the process that holds it."""
        import os
        import socket
        import time

        from filelock import FileLock, Timeout

        from effml.files import atomic_write_text

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.path), timeout=0)
            lock.acquire()
        except Timeout:
            raise RunLockedError(f"{self.run_dir} is in use by another training ({self._holder()}); wait "
                                 f"for it to end or stop it, or choose another run.dir") from None
        except OSError as e:
            raise RunDirError(f"cannot lock run directory {self.run_dir} ({e}); check that it is "
                              f"writable, or choose another run.dir") from None
        self._lock = lock
        try:
            atomic_write_text(self.owner, json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Drop the lock (and the owner note); a no-op when not held."""
        if self._lock is None:
            return
        try:
            self.owner.unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------- resuming


# Config keys a resume may change: how long, how often to log/evaluate/checkpoint, and where and
# how fast it runs. Everything else shapes the checkpoint (model, data, batch, recipe, seed).
SAFE_RESUME_CHANGES = frozenset({
    "train.epochs", "train.max_steps", "train.log_interval", "train.eval_every", "train.checkpoint_interval",
    "train.threads", "train.device", "train.deterministic", "train.channels_last", "data.workers",
    "data.eval_batch_size",
})


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists as ``{"a.b.0": leaf}``."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in data):
        items = enumerate(data)
    else:
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def _same(old: Any, new: Any) -> bool:
    if old == new:
        return True
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(old) == list(new)
    if isinstance(old, str) and isinstance(new, str):  # one path spelled two ways
        import os

        return os.path.realpath(old) == os.path.realpath(new)
    return False


def differences(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
    """``{key: (old, new)}`` for the leaves that differ; a key only one side has (a field added
    or removed between effml versions) is no difference."""
    a, b = flatten(old), flatten(new)
    return {k: (a[k], b[k]) for k in a if k in b and k not in ignore and not _same(a[k], b[k])}


def _show(changes: dict[str, tuple], limit: int = 8) -> str:
    text = ", ".join(f"{k} {json.dumps(o)} -> {json.dumps(n)}" for k, (o, n) in list(changes.items())[:limit])
    return text + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def resume_changes(run_dir: Path, recorded: dict[str, Any] | None, cfg: Config) -> dict[str, tuple]:
    """The config changes a resume makes, all safe ones; raise when one changes what the checkpoint
    depends on (model, data, batch size, recipe, seed)."""
    if not isinstance(recorded, dict):
        return {}
    changes = differences(recorded, config_to_dict(cfg), ignore=("run.dir",))
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_RESUME_CHANGES}
    if unsafe:
        raise RunDirError(
            f"cannot resume {run_dir}: the config changes what its checkpoint depends on: {_show(unsafe)}. "
            f"Drop these changes (from the config file, the overrides or {run_dir / CONFIG_YAML}), "
            f"or train them as a new run in another run.dir. A resume may change only "
            f"{', '.join(sorted(SAFE_RESUME_CHANGES))}")
    return changes


def spec_changes(run_dir: Path, recorded_json: str, spec_json: str) -> None:
    """Raise when the model a resume builds is not the one its checkpoint was trained as."""
    try:
        old = json.loads(recorded_json)
    except ValueError:
        return  # a damaged record: the checkpoint's tensor shapes are still checked on load
    changes = differences(old, json.loads(spec_json))
    if changes:
        raise RunDirError(f"cannot resume {run_dir}: the model differs from the one its checkpoint was "
                          f"trained as: {_show(changes)}. Resume with the same model (model.name and its "
                          f"spec file), or train the new model in another run.dir")


def read_metrics(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The rows of ``metrics.jsonl`` as (line, row); a half-written last line (a crash mid-write)
    is dropped, a damaged line before it is an error."""
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as e:
            if n == len(lines):
                break
            raise RunDirError(f"{path} line {n} is not a metrics row ({e}); the file was edited or "
                              f"damaged: delete that line, then resume again") from None
        rows.append((line, row))
    return rows
