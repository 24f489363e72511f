"""A finished run directory as a model: spec, weights, class names and preprocessing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from effml.errors import EffmlError
from effml.models.network import EfficientNet
from effml.models.registry import Preprocess
from effml.models.weights import load_weights
from effml.spec import NetworkSpec, spec_from_json


@dataclass
class TrainedModel:
    """A model rebuilt from a run directory, ready for predict / eval / export."""

    model: nn.Module
    spec: NetworkSpec
    preprocess: Preprocess
    classes: tuple[str, ...]
    weights_path: Path


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
    spec = spec_from_json((run_dir / "model.json").read_text(), source=str(run_dir / "model.json"))
    choices = {"best": info["weights"], "ema": "weights_ema.safetensors", "raw": "weights.safetensors"}
    if weights not in choices:
        raise EffmlError(f"weights must be one of {sorted(choices)}, got {weights!r}")
    path = run_dir / choices[weights]
    if not path.is_file():
        raise EffmlError(f"{path} does not exist (this run kept no {weights} weights)")
    model = EfficientNet(spec)
    load_weights(model, path)
    preprocess = Preprocess(info["input_size"], info["crop_pct"], tuple(info["mean"]), tuple(info["std"]),
                            "bilinear")
    return TrainedModel(model.eval(), spec, preprocess, tuple(info["classes"]), path)
