"""The training config: types and ranges checked by the schema, one-line errors that name the
source, key, value and allowed range; removed keys; paths relative to the config file; the CLI."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from effml.train.config import (
    Config,
    ConfigError,
    TrainConfig,
    config_to_yaml,
    describe_config,
    load_config,
)
from effml.zoo import load_spec

ROOT = Path(__file__).resolve().parents[1]
EFFML = shutil.which("effml", path=str(Path(sys.executable).parent)) or shutil.which("effml")


def _error(overrides: list[str] = (), path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and "pydantic" not in message
    return message


# ---------------------------------------------------------------- ranges


@pytest.mark.parametrize(("override", "allowed"), [
    ("train.epochs=-1", ">= 1"),
    ("train.epochs=0", ">= 1"),
    ("train.max_steps=0", ">= 1, or null"),
    ("train.max_steps=-3", ">= 1, or null"),
    ("train.label_smoothing=1", "in [0, 1)"),
    ("train.label_smoothing=-0.1", "in [0, 1)"),
    ("train.ema_decay=1", "in (0, 1), or null"),
    ("train.ema_decay=0", "in (0, 1), or null"),
    ("train.log_interval=0", ">= 1"),
    ("train.checkpoint_interval=0", ">= 1, or null"),
    ("train.eval_every=-1", ">= 1"),
    ("train.threads=0", ">= 1, or null"),
    ("optim.lr=-0.1", "> 0"),
    ("optim.lr=0", "> 0"),
    ("optim.momentum=1", "in [0, 1)"),
    ("optim.eps=0", "> 0"),
    ("optim.weight_decay=-1e-5", ">= 0"),
    ("optim.grad_clip=0", "> 0, or null"),
    ("schedule.decay_rate=0", "in (0, 1]"),
    ("schedule.warmup_epochs=-1", ">= 0"),
    ("data.batch_size=0", ">= 1"),
    ("data.batch_size=-8", ">= 1"),
    ("data.image_size=0", ">= 8"),
    ("data.eval_batch_size=0", ">= 1, or null"),
    ("data.workers=-1", ">= 0"),
    ("data.limit_train=0", ">= 1, or null"),
    ("data.holdout=1", "in [0, 1)"),
    ("data.mixup=-0.2", ">= 0"),
    ("data.randaugment_magnitude=31", "in [0, 30]"),
    ("model.dropout=1", "in [0, 1), or null"),
    ("model.drop_path=-0.1", "in [0, 1), or null"),
    ("model.num_classes=0", ">= 1, or null"),
    ("advprop.steps=0", ">= 1, or null"),
    ("distill.temperature=0", "> 0"),
    ("distill.alpha=1.5", "in [0, 1]"),
    ("detect.hflip=1.5", "in [0, 1]"),
    ("detect.iou_threshold=0", "in (0, 1]"),
    ("detect.max_detections=0", ">= 1"),
    ("detect.shapes_classes=5", "in [1, 4]"),
])
def test_an_out_of_range_override_names_source_key_value_and_range(override, allowed):
    key, value = override.split("=")
    message = _error([override])
    assert message.startswith(f"override {override!r}: {key}: ")
    shown = str(float(value)) if any(c in value for c in ".e") else value  # as YAML read it
    assert f"{key}: {shown} is out of range; " in message
    assert message.endswith(f"it must be {allowed}")


def test_an_out_of_range_value_in_a_file_names_the_file_and_every_bad_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: -0.1\ntrain:\n  epochs: 0\n  ema_decay: 1.0\n")
    message = _error(path=bad)
    assert message.startswith(f"{bad}: optim.lr: -0.1 is out of range; it must be > 0; ")
    assert "train.epochs: 0 is out of range; it must be >= 1" in message
    assert "train.ema_decay: 1.0 is out of range; it must be in (0, 1), or null" in message


def test_pairs_are_checked_item_by_item_and_in_order():
    assert _error(["detect.scale_range=[0, 2]"]).endswith("detect.scale_range[0]: 0 is out of range; it must be > 0")
    assert "detect.scale_range: [2.0, 0.5]: low 2.0 is above high 0.5" in _error(["detect.scale_range=[2.0, 0.5]"])
    assert "optim.betas[1]: 1.5 is out of range" in _error(["optim.betas=[0.9, 1.5]"])
    assert "expected a list of 2 numbers, got [1, 2, 3]" in _error(["detect.scale_range=[1, 2, 3]"])


def test_nan_and_inf_are_refused():
    assert "optim.lr: nan is not a finite number" in _error(["optim.lr=.nan"])
    assert "train.label_smoothing: inf is not a finite number" in _error(["train.label_smoothing=.inf"])


def test_values_at_the_bounds_and_the_usual_spellings_are_accepted():
    cfg = load_config(None, ["train.label_smoothing=0", "train.ema_decay=null", "train.max_steps=1",
                             "data.holdout=0", "optim.lr=1e-3", "optim.betas=[0, 0.5]", "distill.alpha=1",
                             "detect.scale_range=[1, 1]", "data.workers=0", "model.num_classes=1"])
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)  # YAML 1.2 float, not text
    assert cfg.optim.betas == (0.0, 0.5) and cfg.detect.scale_range == (1.0, 1.0)
    assert cfg.train.ema_decay is None and cfg.train.max_steps == 1
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0


# ---------------------------------------------------------------- types and keys


@pytest.mark.parametrize(("override", "expected"), [
    ("train.epochs=ten", "train.epochs: expected int, got 'ten' (str)"),
    ("train.epochs=2.5", "train.epochs: expected int, got 2.5 (float)"),
    ("train.epochs=", "train.epochs: expected int, got None (NoneType)"),
    ("train.max_steps=many", "train.max_steps: expected int | null, got 'many' (str)"),
    ("optim.lr=fast", "optim.lr: expected float, got 'fast' (str)"),
    ("optim.lr=true", "optim.lr: expected float, got True (bool)"),
    ("train.amp=1", "train.amp: expected bool, got 1 (int)"),
    ("model.name=3", "model.name: expected str, got 3 (int)"),
    ("data.augment=heavy", "data.augment: 'heavy' is not one of ['none', 'basic', 'randaugment', 'autoaugment']"),
    ("detect.scale_range=0.5", "detect.scale_range: expected a list of 2 numbers, got 0.5"),
    ("train=5", "train: expected a mapping of keys, got 5"),
    ('run.dir=""', "run.dir: '' is empty; give a value"),
])
def test_a_value_of_the_wrong_type_is_named(override, expected):
    assert _error([override]) == f"override {override!r}: {expected}"


def test_unknown_keys_suggest_the_known_one(tmp_path):
    assert _error(["train.epochz=3"]).startswith(
        "override 'train.epochz=3': train: unknown key 'epochz'. Did you mean 'epochs'? Known keys: epochs,")
    assert "unknown key 'modle'. Did you mean 'model'? Known sections: model, data," in _error(["modle.name=x"])
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  batchsize: 8\n")
    assert _error(path=typo).startswith(f"{typo}: data: unknown key 'batchsize'. Did you mean 'batch_size'?")
    typo.write_text("optimizer:\n  lr: 0.1\n")
    assert _error(path=typo).startswith(f"{typo}: unknown key 'optimizer'. Did you mean 'optim'?")
    typo.write_text("- train\n- data\n")
    assert _error(path=typo).startswith(f"{typo}: expected a mapping of sections (model, data,")
    typo.write_text("model:\ntrain:\n  epochs: 2\n")  # a section whose keys are all commented out
    assert load_config(typo).train.epochs == 2
    typo.write_text("train: [epochs: 3\n")
    assert _error(path=typo).startswith(f"{typo}: not valid YAML (")


def _run_dir(tmp_path: Path, extra: str) -> Path:
    """A run directory as an earlier effml left it: config.yaml beside checkpoints/."""
    run = tmp_path / "old_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(config_to_yaml(Config()) + extra)
    return run / "config.yaml"


def test_a_removed_key_is_dropped_from_a_saved_run_config_but_refused_in_a_user_config(tmp_path):
    saved = _run_dir(tmp_path, "  keep_checkpoints: 1\n")  # `run:` is the last section
    cfg = load_config(saved, ["run.dir=elsewhere"])  # what `effml train --resume` does
    assert cfg.run.dir == "elsewhere" and not hasattr(cfg.run, "keep_checkpoints")
    with pytest.raises(ConfigError, match=r"run: unknown key 'keep_checkpoints' \(removed: nothing read it"):
        load_config(saved, saved=False)  # the same file, read as a user's config
    user = tmp_path / "mine.yaml"
    user.write_text("run:\n  keep_checkpoints: 3\n")
    assert _error(path=user) == (f"{user}: run: unknown key 'keep_checkpoints' (removed: nothing read it; a run "
                                 f"keeps its last good checkpoint). Known keys: dir")
    assert "unknown key 'keep_checkpoints'" in _error(["run.keep_checkpoints=1"])
    saved.write_text(saved.read_text() + "  keep_all: true\n")  # only the table's keys are forgiven
    assert "run: unknown key 'keep_all'" in _error(path=saved)


# ---------------------------------------------------------------- paths


def test_paths_in_a_file_resolve_against_the_file_and_overrides_against_the_cwd(tmp_path, monkeypatch):
    here, there = tmp_path / "project" / "configs", tmp_path / "elsewhere"
    here.mkdir(parents=True)
    there.mkdir()
    (here / "c.yaml").write_text(
        "model:\n  name: nets/spec.json\n  weights: ../w.safetensors\n"
        "data:\n  root: data\n"
        "distill:\n  teacher: efficientnet_b0\n  teacher_weights: /abs/t.safetensors\n"
        "run:\n  dir: runs/out\n")
    monkeypatch.chdir(there)
    cfg = load_config(here / "c.yaml")
    assert cfg.model.name == str(here / "nets" / "spec.json")
    assert cfg.model.weights == str(tmp_path / "project" / "w.safetensors")
    assert cfg.data.root == str(here / "data")
    assert cfg.distill.teacher == "efficientnet_b0"  # a zoo name, not a path
    assert cfg.distill.teacher_weights == "/abs/t.safetensors"
    assert cfg.run.dir == "runs/out"  # an output: relative to wherever the run starts
    cfg = load_config(here / "c.yaml", ["data.root=mine", "distill.teacher=t.json", "model.name=efficientnet_b1"])
    assert cfg.data.root == str(there / "mine") and cfg.distill.teacher == str(there / "t.json")
    assert cfg.model.name == "efficientnet_b1" and cfg.model.weights == str(tmp_path / "project" / "w.safetensors")
    monkeypatch.chdir(here)  # a relative config path works the same
    assert load_config("c.yaml").data.root == str(here / "data")


def test_a_saved_run_config_keeps_paths_relative_to_where_the_run_started(tmp_path, monkeypatch):
    saved = _run_dir(tmp_path, "")
    saved.write_text(saved.read_text().replace("name: efficientnet_b0", "name: runs/x/spec.json"))
    monkeypatch.chdir(tmp_path)
    assert load_config(saved).model.name == str(tmp_path / "runs" / "x" / "spec.json")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")
                                         if not p.name.startswith("search_")))  # search configs: test_search_*
def test_every_shipped_config_loads_from_another_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = ROOT / "configs" / name
    if "\nsupernet:" in path.read_text():  # a training config plus the supernet section (effml supernet)
        from effml.search.oneshot.bignas import load_supernet_config

        cfg = load_supernet_config(path)
    elif "\nautohas:" in path.read_text():  # plus the autohas section (effml autohas)
        from effml.search.oneshot.autohas import load_autohas_config

        cfg = load_autohas_config(path)
    else:
        cfg = load_config(path)
    if cfg.model.name.endswith(".json"):
        assert Path(cfg.model.name).is_file() and Path(cfg.model.name).parent == ROOT / "configs"
        load_spec(cfg.model.name)


def test_the_saved_config_reloads_to_the_same_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(ROOT / "configs" / "digits.yaml", ["train.max_steps=5"])
    copy = tmp_path / "copy.yaml"
    copy.write_text(config_to_yaml(cfg))
    assert load_config(copy) == cfg


# ---------------------------------------------------------------- the schema in Python and in words


def test_construction_and_replace_are_validated_too():
    assert dataclasses.replace(TrainConfig(), epochs=3).epochs == 3
    for bad in (lambda: TrainConfig(epochs=0), lambda: dataclasses.replace(TrainConfig(), ema_decay=1.0)):
        with pytest.raises(ValidationError):
            bad()
    cfg = Config()
    with pytest.raises(ValidationError):
        cfg.train.label_smoothing = 1.0
    assert [f.name for f in dataclasses.fields(cfg)][0] == "model" and dataclasses.asdict(cfg)["train"]["epochs"] == 10


def test_show_config_describes_every_field_with_type_default_bounds_and_comment():
    text = describe_config()
    for section in dataclasses.fields(Config):
        assert f"\n{section.name}:  # " in text
        for f in dataclasses.fields(section.default_factory):
            assert f"\n  {f.name}: " in text, f.name
    assert "  epochs: int = 10  [>= 1]\n" in text
    assert "  # EMA of weights (null = off)" in text  # the comment above a field
    assert "  ema_decay: float | null = 0.9999  [in (0, 1), or null]\n" in text
    assert "  scale_range: [float, float] = [0.1, 2.0]  [a list of 2, each > 0, low <= high]" in text
    assert "  dataset: digits | fashion_mnist | folder | shapes | coco = digits\n" in text
    assert "  # digits: scikit-learn's 8x8 digits (embedded)" in text  # the comment above a field
    assert "keep_checkpoints" not in text


# ---------------------------------------------------------------- the CLI, as a user runs it


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Two mistakes, each run through the installed ``effml`` (concurrently: each start imports torch)."""
    assert EFFML, "the effml console script is not installed (pip install -e .)"
    d = tmp_path_factory.mktemp("cli")
    (d / "bad.yaml").write_text("model:\n  name: efficientnet_b0\noptim:\n  lr: -0.1\n")
    cases = {"override": ["train.epochs=-1"], "file": [str(d / "bad.yaml")]}
    procs = {name: (subprocess.Popen([EFFML, "train", *args, f"run.dir={d / name}"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=d), d / name)
             for name, args in cases.items()}
    out = {}
    for name, (proc, run_dir) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), run_dir)
    return out


@pytest.mark.parametrize(("case", "expected"), [
    ("override", "error: override 'train.epochs=-1': train.epochs: -1 is out of range; it must be >= 1"),
    ("file", "bad.yaml: optim.lr: -0.1 is out of range; it must be > 0"),
])
def test_cli_reports_a_config_mistake_in_one_line_and_writes_nothing(cli_runs, case, expected):
    proc, run_dir = cli_runs[case]
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert not run_dir.exists()


# ---------------------------------------------------------------- a training config plus a section


def test_a_config_plus_a_section_is_told_apart_by_parsing_and_strips_to_a_plain_training_config(tmp_path):
    from effml.search.oneshot.autohas import AutoHASConfig
    from effml.search.oneshot.bignas import SupernetConfig, load_supernet_config
    from effml.train.config import config_kind, training_config

    plain = tmp_path / "plain.yaml"
    plain.write_text("# supernet: a word in a comment, not a section\ntrain:\n  epochs: 2\n")
    supernet = tmp_path / "supernet.yaml"
    supernet.write_text('{"train": {"epochs": 2}, "supernet": {"space": "my_space.yaml"}}')  # JSON is YAML too
    kinds = [SupernetConfig, AutoHASConfig]
    assert config_kind(plain, kinds) is Config and config_kind(supernet, kinds) is SupernetConfig
    cfg = load_supernet_config(supernet)
    assert cfg.supernet.space == str(tmp_path / "my_space.yaml")  # the section's input path, as the file's
    stripped = training_config(cfg)
    assert type(stripped) is Config and stripped.train.epochs == 2
    assert config_to_yaml(stripped) == config_to_yaml(cfg).split("supernet:")[0]
    stripped.train.epochs = 3  # a copy: the supernet's config stays as it was
    assert cfg.train.epochs == 2
