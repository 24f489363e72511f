"""TuNAS (arXiv 2008.06120): the reward, the schedules (controller delay, exponential learning rate,
op and filter warm-ups), the controller learning the better option with Adam, every op of a block
averaged during the warm-up, and ``effml search`` with ``search.strategy=tunas`` end to end: the
found spec recorded as a trial, export, resume after SIGKILL equal to an uninterrupted run, and
the refusals before any training (a table of another space, a target below the smallest member,
measured latency)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from _effml_cli import ENV, EFFML, effml, kill_when
from safetensors.torch import load_file

from effml.errors import SearchError
from effml.search.oneshot.supernet import Supernet, block_kinds
from effml.search.oneshot.tunas import (
    TunasStep,
    build_supernet,
    check_tunas,
    linear_decay,
    load_tunas_supernet,
    training_config,
    tunas_reward,
)
from effml.search.spaces.search_space import Choice, SearchSpace
from effml.search.study.config import TunasConfig, build_space, load_search_config
from effml.search.study.policy import Adam, FactorizedPolicy
from effml.search.study.storage import load_study
from effml.spec import BlockSpec, NetworkSpec
from effml.spec.plan import plan
from effml.zoo.kinds import spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "search_tunas_fashion_mnist.yaml"


def tiny_space(num_classes: int = 10) -> SearchSpace:
    """Two searchable rows, each choosing IBN or fused IBN, kernel, expansion, width and depth."""
    rows = ((BlockSpec("ds", 8, kernel_size=3),),
            (BlockSpec("ir", 16, repeats=2, kernel_size=5, stride=2, expand_ratio=6.0),),
            (BlockSpec("ir", 24, repeats=2, kernel_size=5, stride=2, expand_ratio=6.0, se_ratio=0.25),))
    base = NetworkSpec(rows, stem_channels=8, head_channels=32, num_classes=num_classes, resolution=16)
    choices = []
    for s, widths in ((1, (12, 16)), (2, (16, 24))):
        choices += [Choice("kind", ("ir", "er"), s, 0), Choice("kernel_size", (3, 5), s, 0),
                    Choice("expand_ratio", (3.0, 6.0), s, 0), Choice("out_channels", widths, s, 0),
                    Choice("repeats", (-1, 0), s, 0)]
    return SearchSpace("tiny_ops", base, tuple(choices))


def _step(space: SearchSpace, **changes) -> TunasStep:
    cfg = TunasConfig(**changes)
    return TunasStep(space, cfg, lambda spec: plan(spec).macs() / 1e6, 1.0, seed=3)


def test_the_rewards_by_hand():
    # TuNAS's absolute reward: Q + beta |T/T0 - 1|, equal to Q on target, symmetric around it
    assert tunas_reward(0.8, 10, 10, -0.1) == pytest.approx(0.8)
    assert tunas_reward(0.8, 12, 10, -0.1) == pytest.approx(0.78)
    assert tunas_reward(0.8, 8, 10, -0.1) == pytest.approx(0.78)
    # MnasNet's soft reward: Q (T/T0)^beta
    assert tunas_reward(0.8, 5, 10, -0.07, "mnasnet") == pytest.approx(0.8 * 2 ** 0.07)


def test_schedules_delay_then_exponential_growth_and_linear_warmups():
    step = _step(tiny_space(), delay=0.25, controller_lr=0.01, lr_growth=10.0)
    assert step.learning_rate(0, 100) == step.learning_rate(24, 100) == 0.0
    assert step.learning_rate(25, 100) == pytest.approx(0.01)
    assert step.learning_rate(100, 100) == pytest.approx(0.1)
    assert [linear_decay(s, 4) for s in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert linear_decay(0, 0) == 0.0
    with pytest.raises(SearchError, match="tunas.op_warmup=0.5 is longer than tunas.delay=0.25"):
        _step(tiny_space(), op_warmup=0.5)


def test_draws_are_fixed_by_seed_and_step_and_the_warmups_widen_and_mix():
    space = tiny_space()
    step = _step(space)
    assert step.draw(7, 100) == step.draw(7, 100)
    first = step.draw(0, 100)  # warm-up probability 1: every width at its largest, every op mixed
    assert {at for at in first.all_ops} == {(1, i) for i in range(first.train_spec.stages[1][0].repeats)} | {
        (2, i) for i in range(first.train_spec.stages[2][0].repeats)}
    assert all(set(v) == {"ir", "er"} for v in first.all_ops.values())
    for s in (1, 2):
        b = first.train_spec.stages[s][0]
        assert b.expand_ratio == 6.0 and b.out_channels == (16 if s == 1 else 24)
    late = step.draw(60, 100)  # after the warm-ups: the controller's sample itself
    assert late.train_spec == late.spec and not late.all_ops
    kinds = [step.draw(n, 100).spec.stages[1][0].kind for n in range(40, 80)]
    assert {"ir", "er"} == set(kinds)  # a uniform controller draws both


def test_every_op_of_a_block_is_averaged_and_each_learns():
    space = tiny_space()
    torch.manual_seed(0)
    net = Supernet(space).train()
    step = _step(space)
    d = step.draw(0, 100)
    x = torch.randn(4, 3, 16, 16)
    out = net(x, child=net.child_spec(d.train_spec), all_ops={
        at: {k: net.child_spec(v) for k, v in variants.items()} for at, variants in d.all_ops.items()})
    out.sum().backward()
    assert net.get_parameter("blocks.1.0.conv_dw.weight").grad.abs().sum() > 0  # IBN
    assert net.get_parameter("op_weights.er.s1b0.conv_exp.weight").grad.abs().sum() > 0  # fused IBN
    # with only the child's own op at a block, the mixture is the child itself
    spec = net.child_spec(d.spec)
    own = {(1, 0): {block_kinds(spec)[(1, 0)]: spec}}
    net.eval()
    torch.testing.assert_close(net(x, child=spec, all_ops=own), net(x, child=spec), rtol=0, atol=1e-6)


def test_keep_buffers_scores_on_batch_statistics_without_touching_the_shared_ones():
    space = tiny_space()
    net = Supernet(space).train()
    before = {k: v.clone() for k, v in net.named_buffers()}
    spec = net.child_spec(space.smallest().spec)
    with torch.no_grad():
        net(torch.randn(8, 3, 16, 16), child=spec, keep_buffers=True)
    for k, v in net.named_buffers():
        assert torch.equal(v, before[k]), k


def test_the_controller_with_adam_learns_the_option_that_pays_within_a_short_search():
    rng = np.random.default_rng(0)
    policy = FactorizedPolicy(adam=Adam())
    for _ in range(300):
        p = policy.probs("op", 3)
        i = int(rng.choice(3, p=p))
        reward = 0.7 + 0.05 * (i == 2) + rng.normal(0, 0.02)  # option 2 is 5 points better, noisy
        policy.update({"op": (i, 3)}, reward, lr=0.02, decay=0.95, entropy_weight=0.0)
    assert np.argmax(policy.probs("op", 3)) == 2 and policy.probs("op", 3)[2] > 0.8
    state = policy.state_dict()
    again = FactorizedPolicy()
    again.load_state_dict(json.loads(json.dumps(state)))  # plain data, Adam's moments included
    assert again.adam.t == 300 and np.allclose(again.adam.v["op"], policy.adam.v["op"])


# -- effml search with search.strategy=tunas, end to end ------------------------------------------

def _space_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_ops.json"
    path.write_text(json.dumps(tiny_space().to_dict()))
    return path


def _args(tmp_path: Path, run: str, *more: str) -> list[str]:
    return [f"search.space={_space_file(tmp_path)}", f"search.storage={tmp_path / (run + '.db')}",
            "search.study=t", "objective.latency=flops", "objective.target=1.0",
            "proxy.data.dataset=digits", "proxy.data.limit_train=null", "proxy.data.image_size=16",
            "proxy.data.batch_size=32", "proxy.data.holdout=0.2", "proxy.data.limit_val=null",
            "proxy.train.epochs=3", "proxy.train.log_interval=10", "proxy.train.deterministic=true",
            f"proxy.run.dir={tmp_path / run}", *more]


def test_search_strategy_tunas_records_a_trial_exports_and_resumes_after_sigkill_exactly(tmp_path):
    out = effml("search", str(CONFIG), *_args(tmp_path, "straight"))
    straight = tmp_path / "straight"
    record = json.loads((straight / "tunas.json").read_text())
    steps = 3 * (int(0.8 * 1437) // 32)  # 3 epochs of the digits' training part at batch 32
    assert f"TuNAS: {steps} steps; found" in out.stdout and record["steps"] == steps
    assert len(record["history"]) == steps - int(0.25 * steps)  # a reward for every step after the delay
    assert {"reward", "accuracy", "cost", "entropy"} <= set(record["history"][0])
    assert (straight / "tunas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    effml("search", "export", str(tmp_path / "straight.db"), "-o", str(tmp_path / "best.json"))
    assert json.loads((tmp_path / "best.json").read_text()) == json.loads((straight / "found_model.json").read_text())
    # the finished search's supernet loads back and scores its found child as the search did
    trained = load_tunas_supernet(straight)
    spec = trained.supernet.child_spec(spec_from_dict(json.loads((straight / "found_model.json").read_text())))
    child = trained.calibrated(spec)
    top1 = trained.evaluate(child, spec.resolution, "holdout")["top1"]
    assert top1 / 100 == pytest.approx(record["found"]["metrics"]["accuracy"], abs=1e-9)
    # the finished search's supernet scores another strategy's samples (objective.accuracy=supernet)
    scored = effml("search", str(CONFIG), *_args(tmp_path, "scored"), "search.strategy=random", "search.trials=6",
                   "search.workers=1", "objective.accuracy=supernet", f"objective.supernet={straight}")
    trials = [t for t in load_study(str(tmp_path / "scored.db"), "t").trials if t.state.is_finished()]
    assert len(trials) == 6 and not (tmp_path / "scored").exists(), scored.stdout  # nothing trained
    holdout = len(trained.trainer.dataset("holdout"))
    for t in trials[:2]:  # as the supernet scores the child itself (channels-last: at most one image apart)
        spec = trained.supernet.child_spec(spec_from_dict(t.user_attrs["spec"]))
        alone = trained.evaluate(trained.calibrated(spec), spec.resolution, "holdout")["top1"] / 100
        assert t.user_attrs["metrics"]["accuracy"] == pytest.approx(alone, abs=1.01 / holdout)

    killed = tmp_path / "killed"
    cmd = [EFFML, "search", str(CONFIG), *_args(tmp_path, "killed", "proxy.train.checkpoint_interval=30")]
    # the first checkpoint (step 30) is past the delay (step 26): the controller has learned
    proc = kill_when(cmd, killed / "checkpoints" / "last.pt", env=ENV)
    assert proc.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    before = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["step"]["elapsed"]
    effml("search", str(CONFIG), *_args(tmp_path, "killed", "proxy.train.checkpoint_interval=30"), "--resume")
    resumed = json.loads((killed / "tunas.json").read_text())
    # its cost counts the killed session's work up to its checkpoint, not only the resumed session's
    assert before["cpu_s"] > 0 and resumed["cpu_s"] >= before["cpu_s"] and resumed["wall_s"] >= before["wall_s"]
    assert resumed["history"] == record["history"] and resumed["distributions"] == record["distributions"]
    assert resumed["found"] == record["found"]
    a, b = load_file(straight / "weights.safetensors"), load_file(killed / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_supernet_starts_its_residual_blocks_as_the_identity_unless_told_not_to(tmp_path):
    cfg = load_search_config(CONFIG, _args(tmp_path, "init"))
    space = build_space(cfg)
    training = training_config(cfg, space)
    plain, zeroed = build_supernet(training, space), build_supernet(training, space, zero_init=True)
    gammas = {n: p for n, p in zeroed.named_parameters() if n.endswith(".weight") and p.ndim == 1 and not p.any()}
    assert gammas and all(plain.get_parameter(n).any() for n in gammas)  # same seed, only those zeroed
    assert cfg.tunas.zero_init_last_bn  # the default, as BigNAS's supernet.zero_init_last_bn


def test_tunas_refuses_before_training_what_it_cannot_search(tmp_path):
    def cfg(*more: str):
        return load_search_config(CONFIG, _args(tmp_path, "refused", *more))

    c = cfg("objective.target=0.01")
    with pytest.raises(SearchError, match=r"below the smallest member's cost \(0.\d+ MMACs\)"):
        check_tunas(c, build_space(c))
    c = cfg("objective.latency=measured", "objective.target=1")
    with pytest.raises(SearchError, match="objective.latency=measured would time thousands"):
        check_tunas(c, build_space(c))
    c = cfg("proxy.data.holdout=0")
    with pytest.raises(SearchError, match="proxy.data.holdout"):
        check_tunas(c, build_space(c))
    # a latency table of this machine built for another space: refused, naming a missing layer
    from effml.measure.latency_table import Settings, build_latency_table
    from effml.spec.scaling import compound_scale

    other = compound_scale(tiny_space().base, width=2.0)
    table = build_latency_table([other], settings=Settings(warmup=1, rounds=2))
    table.save(tmp_path / "other.json")
    c = cfg("objective.latency=table", f"objective.table={tmp_path / 'other.json'}", "objective.target=1")
    with pytest.raises(SearchError, match=r"lacks \d+ layers of space 'tiny_ops'.*another space"):
        check_tunas(c, build_space(c))
    assert not (tmp_path / "refused").exists()
