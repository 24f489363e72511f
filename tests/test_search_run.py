"""Searches as a user runs them: the reward, the trial record, local and Ray runners, resume
after kill -9, failed trials, export -> train, and clear errors for bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from _effml_cli import run_effml

from effml.errors import SearchError
from effml.models.counting import count_macs, count_params
from effml.models.network import EfficientNet
from effml.search.study.config import build_space, load_search_config
from effml.search.study.cost import spec_cost
from effml.search.study.reward import mnasnet_reward
from effml.search.study.runner import run_search
from effml.search.study.drivers import STALE
from effml.search.study.storage import choose_trial, load_study
from effml.spec import NetworkSpec, parse_arch
from effml.zoo.kinds import spec_to_dict

EFFML = shutil.which("effml") or str(Path(sys.executable).parent / "effml")
optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY = NetworkSpec(stages=parse_arch([["ds_r1_k3_s1_e1_c8"], ["ir_r1_k3_s2_e3_c16"], ["ir_r1_k3_s2_e3_c24"]]),
                   stem_channels=8, head_channels=32, num_classes=10, resolution=16)


def test_mnasnet_reward_soft_and_hard_by_hand():
    # soft, alpha = beta = -0.07 (MnasNet section 3): 0.8 * (5/10)^-0.07 = 0.8 * 1.049717
    assert mnasnet_reward(0.8, 5, 10) == pytest.approx(0.8 * 2 ** 0.07)
    assert mnasnet_reward(0.8, 10, 10) == pytest.approx(0.8)
    assert mnasnet_reward(0.8, 20, 10) == pytest.approx(0.8 * 2 ** -0.07)
    assert mnasnet_reward(0.8, 5, 10) > mnasnet_reward(0.8, 10, 10) > mnasnet_reward(0.8, 20, 10)
    # hard, alpha = 0, beta = -1: no bonus under the target, accuracy halved at twice the target
    assert mnasnet_reward(0.8, 5, 10, 0.0, -1.0) == pytest.approx(0.8)
    assert mnasnet_reward(0.8, 10, 10, 0.0, -1.0) == pytest.approx(0.8)
    assert mnasnet_reward(0.8, 20, 10, 0.0, -1.0) == pytest.approx(0.4)
    # the soft trade-off: twice the latency for 5% more accuracy is (about) even
    assert mnasnet_reward(0.8 * 1.05, 20, 10) == pytest.approx(mnasnet_reward(0.8, 10, 10), rel=2e-3)
    with pytest.raises(SearchError):
        mnasnet_reward(0.8, 0, 10)


def test_spec_cost_equals_the_built_model():
    cost = spec_cost(TINY)
    net = EfficientNet(TINY)
    assert cost["params"] == count_params(net)
    assert cost["macs"] == count_macs(net, 16)


def _config(tmp_path: Path, **search) -> Path:
    """A tiny search: 2 decisions over TINY, digits at 16 px, 3 proxy steps, latency as MACs."""
    space = {"name": "tiny", "base": spec_to_dict(TINY),
             "choices": [{"at": "s1.r0", "field": "kernel_size", "options": [3, 5]},
                         {"at": "s2.r0", "field": "expand_ratio", "options": [3.0, 6.0]}]}
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    cfg = {
        "search": {"space": "space.yaml", "trials": 4, "strategy": "random", "storage": "out/search.db",
                   "study": "tiny", "workers": 2, "threads": 1, **search},
        "objective": {"kind": "reward", "target": 0.2, "latency": "flops"},
        "proxy": {"data": {"dataset": "digits", "image_size": 16, "batch_size": 32, "holdout": 0.2},
                  "optim": {"name": "adamw", "lr": 0.003}, "schedule": {"warmup_epochs": 0},
                  "train": {"epochs": 1, "max_steps": 3, "ema_decay": None, "log_interval": 100}},
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _effml(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_effml(args, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("search")
    config = _config(tmp, pruner="median")  # workers report per-epoch accuracy to the shared storage
    proc = _effml("search", config, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert "trial 4/4" in proc.stdout and "best" in proc.stdout and "ETA" in proc.stdout
    return tmp


def test_a_search_records_every_trial(finished_search):
    study = load_study(str(finished_search / "out" / "search.db"))
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 4 == len(study.trials)
    for t in trials:
        m = t.user_attrs["metrics"]
        assert 0 <= m["accuracy"] <= 1 and m["macs"] > 0 and m["params"] > 0
        assert 0 < t.user_attrs["cpu_s"] <= 2 * t.user_attrs["duration_s"] + 1  # the worker's own CPU, 1 thread
        assert m["reward"] == pytest.approx(mnasnet_reward(m["accuracy"], m["latency_mmacs"], 0.2))
        assert t.values == [m["reward"]]
        assert t.user_attrs["spec"]["kind"] == "efficientnet" and t.user_attrs["seed"] == t.number
        assert set(t.params) == {"s1.r0.kernel_size", "s2.r0.expand_ratio"}
    assert study.user_attrs["objective"]["kind"] == "reward"
    assert study.user_attrs["space"]["name"] == "tiny"


def test_export_then_train_and_report(finished_search):
    tmp = finished_search
    proc = _effml("search", "export", "out/search.db", "-o", "best.json", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    study = load_study(str(tmp / "out" / "search.db"))
    assert f"trial {study.best_trial.number}" in proc.stdout
    assert json.loads((tmp / "best.json").read_text()) == study.best_trial.user_attrs["spec"]
    proc = _effml("train", "model.name=best.json", "data.image_size=16", "train.max_steps=2",
                  "run.dir=runs/best", "--quiet", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    proc = _effml("search", "report", "out/search.db", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    assert (tmp / "out" / "report" / "report.html").is_file()
    with pytest.raises(SearchError, match="no finished trial 99"):
        choose_trial(study, 99)


def test_resume_with_another_proxy_is_refused_and_a_missing_study_file_is_not_made(finished_search):
    tmp = finished_search
    proc = _effml("search", "search.yaml", "--resume", "proxy.train.max_steps=4", cwd=tmp)
    assert proc.returncode == 2 and "another proxy (proxy.train.max_steps: 3 before, 4 now)" in proc.stderr
    # what changes no score is not refused (the study is complete: nothing runs)
    proc = _effml("search", "search.yaml", "--resume", "proxy.train.threads=2", "proxy.train.log_interval=7", cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    for command in (["report", "out/nothere.db"], ["export", "out/nothere.db", "-o", "x.json"]):
        proc = _effml("search", *command, cwd=tmp)
        assert proc.returncode == 2 and "nothere.db: no such study file" in proc.stderr
        assert not (tmp / "out" / "nothere.db").exists() and not (tmp / "x.json").exists()


def test_kill_9_then_resume_loses_and_repeats_nothing(tmp_path):
    # the killed driver's running trial is failed once its heartbeat is 3 s old
    config = _config(tmp_path, trials=4, workers=1, heartbeat_s=1, grace_s=3)
    db = tmp_path / "out" / "search.db"
    # Kill on the first progress line, which the search prints right after recording a finished
    # trial: polling the database instead raced with a warm worker that finishes the remaining
    # trials within a poll interval on a loaded machine.
    proc = subprocess.Popen([EFFML, "search", str(config)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("trial 1/4"):
            break
    workers = _children(proc.pid) if proc.poll() is None else []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    done = load_study(str(db)).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert proc.returncode == -signal.SIGKILL and 1 <= len(done) < 4, f"the search ended before the kill: {seen}"
    assert workers, "the search had no worker process"
    deadline = time.time() + 20
    while time.time() < deadline and any(map(_alive, workers)):
        time.sleep(0.2)
    assert not any(map(_alive, workers)), "workers outlived the killed search"
    before = {t.number: (t.params, t.values) for t in load_study(str(db)).get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))}

    out = _effml("search", config, "--resume", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    study = load_study(str(db))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 4
    after = {t.number: (t.params, t.values) for t in complete}
    assert all(after[n] == before[n] for n in before)  # every finished trial is there, unchanged, once
    for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,)):
        assert t.user_attrs["error"] == STALE.format(grace=3)  # the one that was running when killed
    # a second --resume of a study that reached its count runs nothing
    again = _effml("search", config, "--resume", cwd=tmp_path)
    assert again.returncode == 0 and len(load_study(str(db)).trials) == len(study.trials)


def _children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (Linux /proc; a thread may end while we read)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (an exited one not yet reaped, a zombie, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, trials=3, workers=1, max_failures=10)
    data = yaml.safe_load(config.read_text())
    space = yaml.safe_load((tmp_path / "space.yaml").read_text())
    space["hyper"] = [{"key": "optim.lr", "kind": "categorical", "options": [0.003, 1.0e12]}]
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    config.write_text(yaml.safe_dump(data))
    cfg = load_search_config(config)
    lines: list[str] = []
    result = run_search(cfg, build_space(cfg, 10), echo=lines.append)
    study = result.study
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3 and result.finished == 3
    assert failed and all(t.params["optim.lr"] == 1.0e12 for t in failed)
    assert all("TrainingDiverged" in t.user_attrs["error"] for t in failed)
    assert all(t.params["optim.lr"] == 0.003 for t in complete)
    assert any("failed" in line for line in lines)


def test_int8_agreement_is_measured_after_the_proxy_and_constrains_the_reward(tmp_path):
    from effml.search.spaces.search_space import Sample
    from effml.search.study.cost import LatencyModel
    from effml.search.study.proxy import Accuracy, evaluate_sample, proxy_training

    cfg = load_search_config(_config(tmp_path, workers=1), ["objective.int8_min_agreement=0.9"])
    scored = proxy_training(cfg, Sample({}, TINY), TINY, seed=0)
    assert 0.0 <= scored.metrics["int8_agreement"] <= 1.0  # the trained network's int8 model, on held-out images
    latency, network = LatencyModel(cfg.objective), TINY

    def scored_with(agreement: float):
        return lambda *args: Accuracy(0.8, {"int8_agreement": agreement})

    ships = evaluate_sample(cfg, Sample({}, TINY), network, 0, latency, accuracy=scored_with(0.95))
    assert ships.values == [pytest.approx(mnasnet_reward(0.8, latency(network), 0.2))]
    fails = evaluate_sample(cfg, Sample({}, TINY), network, 0, latency, accuracy=scored_with(0.85))
    assert fails.values == [0.0] and fails.metrics["accuracy"] == 0.8 and fails.metrics["int8_agreement"] == 0.85
    with pytest.raises(SearchError, match="int8_min_agreement"):
        from effml.search.study.proxy import check_proxy

        check_proxy(load_search_config(_config(tmp_path, workers=1), ["objective.int8_min_agreement=0.9",
                                                                     "objective.accuracy=supernet"]))


def test_too_many_failures_in_a_row_stop_the_study(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_search_config(_config(tmp_path, workers=1, max_failures=1), ["proxy.optim.lr=1.0e12"])
    with pytest.raises(SearchError, match="failed in a row"):
        run_search(cfg, build_space(cfg, 10), echo=lambda line: None)


def test_the_ray_runner_fills_the_same_kind_of_study(tmp_path):
    pytest.importorskip("ray")
    config = _config(tmp_path, trials=2, runner="ray")
    proc = _effml("search", config, cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr
    study = load_study(str(tmp_path / "out" / "search.db"))
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 2 and all("metrics" in t.user_attrs for t in complete)


@pytest.mark.parametrize("override, message", [
    ("search.storage=postgresql://nobody@127.0.0.1:1/none", "cannot open the study storage"),
    ("search.storage=sqlite:////proc/no/such/dir/s.db", "cannot open the study storage"),
    ("search.space=nasnet", "unknown search space 'nasnet'"),
    ("objective.target=null", "needs objective.target"),
    ("objective.latency=table", "needs objective.table"),
    ("objective.accuracy=holdout", "needs proxy.data.holdout"),
])
def test_bad_search_input_is_one_clear_error(tmp_path, monkeypatch, override, message):
    monkeypatch.chdir(tmp_path)
    extra = ["proxy.data.holdout=0.0"] if "holdout" in override else []
    with pytest.raises(SearchError, match=message.replace("(", r"\(")):
        cfg = load_search_config(_config(tmp_path, workers=1), [override, *extra])
        run_search(cfg, build_space(cfg, 10), echo=lambda line: None)


def test_the_cli_reports_a_taken_study_name_in_one_line(finished_search):
    proc = _effml("search", finished_search / "search.yaml", cwd=finished_search)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: study 'tiny' already exists") and "--resume" in proc.stderr


def test_latency_table_and_show_from_the_command_line(finished_search):
    tmp = finished_search
    proc = _effml("search", "latency-table", "space.yaml", "--resolution", "16", "--num-classes", "10",
                  "--calibrate", "2", "--validate", "3", "-o", "lut.json", cwd=tmp)
    # 4 distinct members in the space: 2 calibrate, the other 2 validate (never the same ones)
    assert proc.returncode == 0, proc.stderr
    assert "the space has 4 distinct members" in proc.stdout
    assert "predicted vs measured on 2 networks" in proc.stdout
    table = json.loads((tmp / "lut.json").read_text())
    assert table["runtime"] == "eager" and table["threads"] == 1
    # the search takes it: latency from the table, no trial measured
    cfg = load_search_config(tmp / "search.yaml", ["objective.latency=table", f"objective.table={tmp / 'lut.json'}",
                                                   "objective.target=5"])
    from effml.search.study.cost import LatencyModel
    model = LatencyModel(cfg.objective)
    space = build_space(cfg, 10)
    assert model(space.largest().spec) > 0
    proc = _effml("search", "show", "space.yaml", "-o", "copy.json", cwd=tmp)
    assert proc.returncode == 0 and "4 distinct networks" in proc.stdout, proc.stderr
    assert json.loads((tmp / "copy.json").read_text())["choices"] == yaml.safe_load(
        (tmp / "space.yaml").read_text())["choices"]


def test_a_space_for_another_class_count_is_refused_before_any_trial(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_search_config(_config(tmp_path, workers=1))
    assert build_space(cfg).base.num_classes == 10  # the default: the proxy data set's classes (digits)
    with pytest.raises(SearchError, match=r"built for 3 classes but proxy.data \(digits\) has 10"):
        run_search(cfg, build_space(cfg, 3), echo=lambda line: None)
    assert not (tmp_path / "search.db").exists() or not load_study(str(tmp_path / "search.db")).trials


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    # spawned workers import the user's script; without the guard each would start the search again
    config = _config(tmp_path, trials=2, workers=1, max_failures=0)
    script = tmp_path / "my_search.py"
    script.write_text("from effml.search import build_space, load_search_config, run_search\n"
                      f"cfg = load_search_config({str(config)!r})\n"
                      "run_search(cfg, build_space(cfg))\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "run_search was called in a search worker" in proc.stderr  # the worker says why it stopped
    assert f"if {script} starts the search" in proc.stderr and 'if __name__ == "__main__":' in proc.stderr
