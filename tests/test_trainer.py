"""The Trainer a search drives: pluggable steps (gradient accumulation, temporary weights),
in-process trials that leave no global state behind, the held-out split, the epoch hook."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from effml.spec import NetworkSpec, parse_arch
from effml.spec.entry import Preprocess
from effml.train.config import Config, load_config
from effml.train.data import build_datasets, holdout_split
from effml.train.engine import fit
from effml.train.objective import Batch, StepOutput
from effml.train.step import accumulate_step, default_step, temporary_weights
from effml.train.trainer import Trainer, preserved_global_state
from effml.zoo import create_model

# The tiny MBConv network of tests/test_train.py (20k parameters), given as a spec object.
TINY = NetworkSpec(
    stages=parse_arch([["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r1_k3_s2_e4_c24_se0.25"],
                       ["ir_r1_k5_s2_e4_c40_se0.25"]]),
    stem_channels=16, head_channels=128, num_classes=10, resolution=32, dropout=0.1, drop_path=0.1,
)


def _cfg(run_dir: Path, *extra: str) -> Config:
    return load_config(None, [f"run.dir={run_dir}", "data.image_size=32", "data.batch_size=32",
                              "optim.name=adamw", "optim.lr=0.003", "train.threads=1", *extra])


def _same(a: Any, b: Any) -> bool:
    """Bit-identical nested state (dicts, lists, tensors, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


NO_NOISE = ("model.dropout=0.0", "model.drop_path=0.0")  # gradients comparable pass by pass


def test_a_two_pass_accumulation_step_sums_both_gradients_into_one_update(tmp_path):
    cfg = _cfg(tmp_path, *NO_NOISE, "optim.name=sgd", "optim.momentum=0.0", "optim.weight_decay=0.0",
               "optim.lr=0.1", "train.ema_decay=null", "data.limit_train=64")
    seen: dict[str, Any] = {}

    def two_halves(trainer: Trainer, batch: Batch) -> StepOutput:
        halves = [Batch(batch.images[s], batch.targets[s], batch.indices[s]) for s in (slice(0, 16), slice(16, None))]
        ref = copy.deepcopy(trainer.model)  # the gradients computed by hand, pass by pass
        grads = []
        for half in halves:
            ref.zero_grad()
            trainer.objective(ref, half).loss.backward()
            grads.append({n: p.grad.clone() for n, p in ref.named_parameters()})
        seen.update(want={n: grads[0][n] + grads[1][n] for n in grads[0]}, lr=trainer.lr,
                    before={n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        return accumulate_step(trainer, [lambda h=h: trainer.objective(trainer.net, h) for h in halves])

    with preserved_global_state():
        trainer = Trainer(cfg, model=TINY, step=two_halves)
        out = trainer.step()
    assert set(out.parts) == {"ce_0", "ce_1"} and out.loss == out.parts["ce_0"] + out.parts["ce_1"]
    assert trainer.global_step == 1 and trainer.scheduler.last_epoch == 1
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p.grad, seen["want"][name], rtol=1e-5, atol=1e-6)
        # exactly one SGD step with the summed gradient
        torch.testing.assert_close(p.detach(), seen["before"][name] - seen["lr"] * p.grad, rtol=0, atol=1e-7)


def test_temporary_weights_leave_the_real_weights_optimizer_and_bn_buffers_untouched(tmp_path):
    cfg = _cfg(tmp_path, *NO_NOISE, "optim.name=rmsprop_tf", "optim.lr=0.01", "data.holdout=0.25",
               "data.limit_train=192", "train.ema_decay=0.9")
    seen: dict[str, Any] = {}

    def virtual(trainer: Trainer, batch: Batch) -> StepOutput:
        weights = temporary_weights(trainer, batch)
        seen.update(batch=batch, weights=weights, reward=trainer.evaluate("holdout", weights=weights))
        return StepOutput(torch.zeros(()), torch.zeros(0), {})

    with preserved_global_state():
        # an already-built module works too (it keeps its own settings: no dropout here either)
        trainer = Trainer(cfg, model=create_model(TINY, dropout=0.0, drop_path=0.0))
        trainer.step(), trainer.step()  # real steps first: the optimizer has momentum and RMS state
        before = copy.deepcopy({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                                "scheduler": trainer.scheduler.state_dict(), "ema": trainer.ema.state_dict()})
        trainer.step_fn = virtual
        trainer.step()
        after = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                 "scheduler": trainer.scheduler.state_dict(), "ema": trainer.ema.state_dict()}
        for key in before:
            assert _same(before[key], after[key]), key
        assert seen["reward"]["count"] == 48 and trainer.model.training  # evaluated, train mode restored

        # the temporary weights are what a real step of the same optimizer on that batch gives
        trainer.optimizer.zero_grad()
        trainer.objective(trainer.net, seen["batch"]).loss.backward()
        trainer.optimizer.step()
    state = trainer.model.state_dict()
    moved = [k for k in state if not torch.equal(state[k], before["model"][k])]
    assert moved and set(moved) <= set(seen["weights"])
    for key in state:
        torch.testing.assert_close(seen["weights"][key], state[key], rtol=1e-5, atol=1e-6)


def _trial(seed: int, run_dir: str) -> dict[str, Any]:
    """A short in-process trial of TINY given as a spec object (run here and in subprocesses)."""
    # the two trials differ in what they set globally: determinism, and the EMA
    extra = ["train.deterministic=true", "train.ema_decay=0.9"] if seed == 0 else ["train.ema_decay=null"]
    cfg = _cfg(Path(run_dir), "data.limit_train=256", "train.max_steps=6", f"train.seed={seed}", *extra)
    result = fit(cfg, model=TINY, write_run=False, quiet=True)
    return {"val": result.val, "ema_val": result.ema_val, "steps": result.global_step}


def test_back_to_back_in_process_fits_equal_separate_processes_and_leave_no_global_state(tmp_path):
    code = ("import json, sys; sys.path.insert(0, {!r}); from test_trainer import _trial; "
            "print(json.dumps(_trial({}, {!r})))")
    tests_dir, never = str(Path(__file__).parent), str(tmp_path / "x")
    procs = [subprocess.Popen([sys.executable, "-c", code.format(tests_dir, seed, never)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)  # not the trials' 1, whatever the process had (tests/conftest.py)
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    try:
        in_process = [_trial(0, never), _trial(1, never)]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng)
    assert not (tmp_path / "x").exists()  # write_run=False writes nothing
    separate = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        separate.append(json.loads(out.strip().splitlines()[-1]))
    assert in_process == separate
    assert in_process[0]["steps"] == 6 and in_process[0]["val"] != in_process[1]["val"]


def test_the_holdout_split_is_disjoint_from_training_and_fixed_by_the_seed(tmp_path):
    cfg = _cfg(tmp_path, "data.holdout=0.25", "data.limit_train=200")
    bundle = build_datasets(cfg, Preprocess(32, 0.875))
    train, held = bundle.train.indices, bundle.holdout.indices
    assert len(held) == 50 and set(train).isdisjoint(held) and sorted(train + held) == list(range(200))
    assert build_datasets(cfg, Preprocess(32, 0.875)).holdout.indices == held
    other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=1))
    assert holdout_split(200, 0.25, 1)[1] == build_datasets(other, Preprocess(32, 0.875)).holdout.indices != held
    # read with the eval transform: no augmentation, the same in every epoch; indices renumbered
    image, label, index = bundle.holdout[3]
    bundle.holdout.set_epoch(5)
    assert torch.equal(bundle.holdout[3][0], image) and index == 3
    assert label == bundle.holdout.base.labels[held[3]]


def test_an_epoch_hook_that_says_stop_ends_the_fit_after_that_epoch(tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(run, "train.epochs=3", "data.limit_train=160", "data.holdout=0.2", "train.ema_decay=null")
    reports: list[tuple[int, dict]] = []
    trained_on: set[int] = set()

    def recording_step(trainer: Trainer, batch: Batch) -> StepOutput:
        trained_on.update(trainer.bundle.train.indices[i] for i in batch.indices.tolist())
        return default_step(trainer, batch)

    def stop_after_first(epoch: int, metrics: dict) -> bool:
        reports.append((epoch, metrics))
        return True

    result = fit(cfg, model=TINY, step=recording_step, on_epoch=stop_after_first, quiet=True)
    assert result.stopped and result.epochs_done == 1 and result.global_step == 4  # 128 images / 32
    assert [e for e, _ in reports] == [1] and reports[0][1]["holdout"] == result.holdout
    assert result.holdout["count"] == 32 and result.val["count"] == 359
    assert trained_on and trained_on.isdisjoint(holdout_split(160, 0.2, 0)[1])
    info = json.loads((run / "run.json").read_text())
    assert info["stopped"] is True and info["holdout"] == result.holdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1] and rows[-1]["kind"] == "stopped"

    # the spec given in-process was saved beside the run, so the run resumes from its config alone
    saved = load_config(run / "config.yaml")
    assert saved.model.name == str(run / "spec.json")
    resumed = fit(saved, resume=True, quiet=True)
    assert not resumed.stopped and resumed.epochs_done == 3 and resumed.global_step == 12


def test_a_cpu_training_never_asks_for_cuda(tmp_path, monkeypatch):
    # where torch is built with CUDA but the machine has no usable GPU, asking for devices can warn
    # ("CUDA initialization: ..."); train.device=cpu must not ask, through training, checkpoints and resume
    def asked(*args: Any, **kwargs: Any) -> bool:
        raise AssertionError("torch.cuda.is_available() was called on a CPU training")

    monkeypatch.setattr(torch.cuda, "is_available", asked)
    root = Path(__file__).resolve().parents[1]
    overrides = ["train.device=cpu", "train.epochs=1", "train.max_steps=2", "data.image_size=16",
                 "data.limit_train=64", "data.limit_val=16", "train.threads=1", f"run.dir={tmp_path / 'run'}"]
    fit(load_config(root / "configs" / "digits.yaml", overrides), quiet=True)
    fit(load_config(root / "configs" / "digits.yaml", [*overrides, "train.epochs=2", "train.max_steps=3"]),
        resume=True, quiet=True)
