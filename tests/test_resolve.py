"""One resolver for every model argument (``effml.train.resolve``): a zoo name, a spec JSON file, a
run directory, a spec or a built module, to its spec, preprocessing and weights; the Trainer, a
distillation teacher and the benchmark take them all, and a run evaluates with the preprocessing
that run.json records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode

import effml.train.trainer
from effml.deploy.benchmark import benchmark
from effml.errors import EffmlError, SpecError, UnknownModelError
from effml.models.weights import save_weights
from effml.spec import NetworkSpec, parse_arch
from effml.spec.entry import Preprocess
from effml.train.config import load_config
from effml.train.data import build_datasets, eval_preprocess
from effml.train.engine import fit
from effml.train.resolve import ResolvedModel, resolve_model
from effml.train.run_dir import RunDirError, load_run
from effml.train.tasks import ClassificationTask
from effml.train.trainer import Trainer, preserved_global_state
from effml.zoo import create_model, get_entry, resolve_spec, spec_to_json

ROOT = Path(__file__).resolve().parents[1]
TINY = NetworkSpec(  # the 20k-parameter network of tests/test_train.py
    stages=parse_arch([["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r1_k3_s2_e4_c24_se0.25"],
                       ["ir_r1_k5_s2_e4_c40_se0.25"]]),
    stem_channels=16, head_channels=128, num_classes=10, resolution=32, dropout=0.1, drop_path=0.1,
)
SPEC_DEFAULT = Preprocess(32, 0.875, interpolation="bilinear")  # what a spec without one gets


def _same_weights(net: nn.Module, other: nn.Module | dict[str, torch.Tensor]) -> bool:
    theirs = other.state_dict() if isinstance(other, nn.Module) else other
    return all(torch.equal(v, theirs[k]) for k, v in net.state_dict().items())


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """TINY as a spec file, and two checkpoints of it (different random initialisations)."""
    d = tmp_path_factory.mktemp("resolve")
    (d / "tiny.json").write_text(spec_to_json(TINY))
    for seed in (1, 2):
        torch.manual_seed(seed)
        save_weights(create_model(TINY), d / f"seed{seed}.safetensors")
    return {"spec": d / "tiny.json", "w1": d / "seed1.safetensors", "w2": d / "seed2.safetensors"}


def _digits(run_dir: Path, model: str, *extra: str):
    return load_config(None, [f"model.name={model}", f"run.dir={run_dir}", "data.image_size=16",
                              "data.batch_size=16", "data.limit_train=32", "optim.name=adamw",
                              "train.epochs=1", "train.max_steps=1", "train.ema_decay=null",
                              "train.threads=1", *extra])


@pytest.fixture(scope="module")
def run(files, tmp_path_factory) -> Path:
    """A finished run of TINY on the digits (one step)."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    fit(_digits(run_dir, str(files["spec"])), quiet=True)
    return run_dir


# ---------------------------------------------------------------- each kind of argument


def test_a_zoo_name_resolves_to_its_entry():
    r = resolve_model("tf_efficientnet_b0.ap_in1k")  # a weight tag changes the preprocessing only
    entry = get_entry("tf_efficientnet_b0.ap_in1k")
    assert (r.source, r.name, r.task) == ("zoo", "tf_efficientnet_b0.ap_in1k", "classify")
    assert r.spec == entry.spec() and r.preprocess == entry.preprocess and r.preprocess.mean == (0.5,) * 3
    assert r.weights is None and r.net is None and r.run_dir is None and r.classes == ()


def test_a_spec_json_file_resolves_with_the_default_preprocessing(files):
    for given in (str(files["spec"]), files["spec"]):  # a str or a Path
        r = resolve_model(given, weights=files["w1"])
        assert (r.source, r.name, r.spec, r.preprocess) == ("file", str(files["spec"]), TINY, SPEC_DEFAULT)
        assert r.net is None and r.weights == files["w1"]
    net = r.build(resolve_spec(r.spec, dropout=0.0))  # overrides, then the weights given
    assert net.spec.dropout == 0.0 and _same_weights(net, create_model(TINY, weights=files["w1"]))
    detector = resolve_model(ROOT / "configs" / "efficientdet_tiny.json")
    assert detector.task == "detect" and detector.preprocess.crop_pct == 1.0  # a detector sees it all
    assert detector.preprocess.input_size == detector.spec.resolution


def test_a_spec_object_resolves_like_its_file(files):
    r = resolve_model(TINY)
    assert (r.source, r.name, r.spec, r.preprocess, r.weights) == ("spec", "NetworkSpec", TINY, SPEC_DEFAULT, None)
    assert r.build(resolve_spec(TINY, num_classes=3)).spec.num_classes == 3


def test_a_built_module_is_used_as_it_is_and_takes_the_weights_given_at_once(files):
    module = create_model(TINY)
    r = resolve_model(module)
    assert (r.source, r.name, r.spec, r.preprocess) == ("module", "EfficientNet", TINY, SPEC_DEFAULT)
    assert r.net is module and r.build() is module
    assert r.build(resolve_spec(TINY, num_classes=3)) is module  # a built network keeps its settings
    r = resolve_model(module, weights=files["w2"])
    assert r.weights == files["w2"] and _same_weights(module, create_model(TINY, weights=files["w2"]))


def test_a_run_directory_resolves_to_its_spec_preprocessing_and_weights(run, files):
    info = json.loads((run / "run.json").read_text())
    assert info["interpolation"] == "bilinear" and info["crop_pct"] == 1.0  # digits: whole, bilinear
    r = resolve_model(run)
    trained = load_run(run)
    assert (r.source, r.name, r.run_dir, r.task) == ("run", str(run), run, "classify")
    assert r.spec == trained.spec and r.preprocess == trained.preprocess == eval_preprocess(
        _digits(run, str(files["spec"])), SPEC_DEFAULT)
    assert r.weights == run / info["weights"] and r.classes == tuple(str(i) for i in range(10))
    assert r.build() is r.net and _same_weights(r.net, trained.model)
    # a checkpoint given replaces the run's weights; the run still gives spec, preprocessing, classes
    other = resolve_model(str(run), weights=files["w1"])
    assert other.weights == files["w1"] and other.classes == r.classes
    assert _same_weights(other.net, create_model(trained.spec, weights=files["w1"]))


def test_a_run_json_without_interpolation_reads_as_bilinear_and_a_bad_one_is_named(run, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    del info["interpolation"]  # as effml wrote it before recording the interpolation
    (copy / "run.json").write_text(json.dumps(info))
    assert resolve_model(copy).preprocess.interpolation == "bilinear"
    (copy / "run.json").write_text(json.dumps({**info, "interpolation": "lanczos"}))
    with pytest.raises(RunDirError, match=r"run\.json is damaged \(interpolation: .*'lanczos' is not one of"):
        resolve_model(copy)


@pytest.mark.parametrize(("model", "error", "words"), [
    (3, SpecError, r"int 3 is not a model effml can resolve; give a zoo name .* a spec JSON file, a run "
                   r"directory written by `effml train`, a spec, or a module built from a spec"),
    (nn.Linear(2, 2), EffmlError, r"a Linear without a \.spec is not a model effml can resolve; give a zoo name"),
    ("efficientnet_b9", UnknownModelError, r"unknown model 'efficientnet_b9'\. Did you mean: efficientnet_b0"),
    ("nowhere/tiny.json", SpecError, r"spec file 'nowhere/tiny.json' does not exist"),
])
def test_anything_else_is_refused_with_what_to_give(model, error, words):
    with pytest.raises(error, match=words):
        resolve_model(model)


# ---------------------------------------------------------------- the sites that call it


def test_the_trainer_resolves_its_model_once(files, run, tmp_path, monkeypatch):
    calls: list[object] = []

    def counted(model, **kwargs) -> ResolvedModel:
        calls.append(model)
        return resolve_model(model, **kwargs)

    monkeypatch.setattr(effml.train.trainer, "resolve_model", counted)
    with preserved_global_state():
        trainer = Trainer(_digits(tmp_path / "a", str(files["spec"]), "model.dropout=0.0"))
        assert calls == [str(files["spec"])] and trainer.preprocess == SPEC_DEFAULT
        assert (trainer.spec.resolution, trainer.spec.dropout, trainer.spec.num_classes) == (16, 0.0, 10)
        # a run directory trains on from its weights, with its preprocessing
        trainer = Trainer(_digits(tmp_path / "b", str(run)))
        assert calls[-1] == str(run) and trainer.preprocess == load_run(run).preprocess
        assert _same_weights(trainer.model, load_run(run).model)


def test_a_teacher_is_any_model_argument(run, files):
    cfg = load_config(None, [f"distill.teacher={run}"])
    objective = ClassificationTask().objective(cfg, create_model(TINY), TINY, SPEC_DEFAULT, 10, torch.device("cpu"))
    assert _same_weights(objective.teacher, load_run(run).model)
    cfg = load_config(None, [f"distill.teacher={files['spec']}", f"distill.teacher_weights={files['w2']}"])
    objective = ClassificationTask().objective(cfg, create_model(TINY), TINY, SPEC_DEFAULT, 10, torch.device("cpu"))
    assert _same_weights(objective.teacher, create_model(TINY, weights=files["w2"]))


def test_the_benchmark_takes_any_model_argument(files, run):
    for model in (str(files["spec"]), run, TINY):
        result, = benchmark(model, batch_sizes=(1,), runtimes=("eager",), iters=1, warmup=0, threads=1)
        assert result.input_size == (16 if model == run else 32)  # the spec's resolution


# ---------------------------------------------------------------- the eval transform's one source


def _folder(root: Path) -> None:
    for split in ("train", "val"):
        for c, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40 + i, 36), colour).save(root / split / c / f"{i}.png")


def test_natural_images_are_evaluated_with_the_model_interpolation_and_the_run_records_it(tmp_path):
    _folder(tmp_path / "data")
    cfg = load_config(None, ["model.name=mixnet_s", f"run.dir={tmp_path / 'run'}", "data.dataset=folder",
                             f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.batch_size=4",
                             "train.epochs=1", "train.max_steps=1", "train.ema_decay=null", "train.threads=1"])
    entry = get_entry("mixnet_s").preprocess
    assert entry.interpolation == "bicubic"
    assert eval_preprocess(cfg, entry) == Preprocess(16, entry.crop_pct, entry.mean, entry.std, "bicubic")
    resize = build_datasets(cfg, entry).val.transform.transforms[0]
    assert resize.interpolation == InterpolationMode.BICUBIC and resize.size == [int(16 / entry.crop_pct)]
    fit(cfg, quiet=True)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["interpolation"], info["crop_pct"], info["input_size"]) == ("bicubic", entry.crop_pct, 16)
    assert resolve_model(tmp_path / "run").preprocess == eval_preprocess(cfg, entry)
    # the embedded sets are taken whole, bilinear, whatever the model's weights expect
    digits = load_config(None, ["data.image_size=16"])
    assert eval_preprocess(digits, entry) == Preprocess(16, 1.0, entry.mean, entry.std, "bilinear")
