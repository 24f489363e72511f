"""A finished run directory as a model: spec, weights, class names and preprocessing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from typing import Any

from torch import nn

from effml.errors import EffmlError
from effml.spec.entry import Preprocess
from effml.models.weights import load_weights
from effml.train.tasks import task_for
from effml.zoo import load_spec


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
    return p.is_dir() and (p / "run.json").is_file()


def load_run(run_dir: str | Path, weights: str = "best") -> TrainedModel:
    """Rebuild a run's model; ``weights`` is 'best' (EMA when the run kept one), 'ema' or 'raw'."""
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.is_file():
        raise EffmlError(f"{run_dir} is not a finished run directory (no run.json); train it with "
                         f"`effml train`, or resume it with `effml train --resume {run_dir}`")
    info = json.loads(info_path.read_text())
    spec = load_spec(run_dir / "model.json")
    choices = {"best": info["weights"], "ema": "weights_ema.safetensors", "raw": "weights.safetensors"}
    if weights not in choices:
        raise EffmlError(f"weights must be one of {sorted(choices)}, got {weights!r}")
    path = run_dir / choices[weights]
    if not path.is_file():
        raise EffmlError(f"{path} does not exist (this run kept no {weights} weights)")
    model = task_for(spec).build_model(spec)
    load_weights(model, path)
    preprocess = Preprocess(info["input_size"], info["crop_pct"], tuple(info["mean"]), tuple(info["std"]),
                            "bilinear")
    return TrainedModel(model.eval(), spec, preprocess, tuple(info["classes"]), path,
                        info.get("task", "classify"), tuple(info.get("category_ids", ())))
