"""``effml search`` on a real Ray cluster, not only a local instance: a head started with ``ray
start --head`` (no CPUs of its own), worker nodes that join it with ``ray start --address``, and
``search.ray_address`` pointing at it. A worker node killed in the middle of a trial fails that
trial (recorded, not retried silently) and the study reaches its count on the node that is left.
The cluster uses token authentication, as Ray's head enables by default, with a token of its own.
Skipped only where Ray is not installed, and never under ``CI=true``."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from _waiting import wait_for
from test_search_run import _config

from effml.search.study.storage import load_study

State = optuna.trial.TrialState
TRIALS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_under(root: Path) -> list[int]:
    """The processes of this cluster: every Ray process names its session folder under ``root``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(root) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class Cluster:
    """A head and worker nodes on this machine, all in one temporary folder."""

    def __init__(self, root: Path) -> None:
        # Ray's sockets live under its temp folder, and a Unix socket path has at most 107 bytes:
        # pytest's folders (deeper under xdist) are too long, so the cluster gets a short one
        self.root, self.ray = Path(tempfile.mkdtemp(prefix="effml-ray-", dir="/tmp")), str(
            Path(sys.executable).parent / "ray")
        token = root / "token"
        token.write_text(secrets.token_hex(32))
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1",
                    # a dead node found in about 10 s instead of Ray's 30 (its health checks, read by the head;
                    # not fewer: a node starved of CPU by other tests must not be taken for dead)
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "10"}
        self.env.pop("RAY_ADDRESS", None)
        self.address = ""

    def start_head(self) -> None:
        port = _free_port()
        self._start("--head", f"--port={port}", "--num-cpus=0", "--include-dashboard=false",
                    f"--temp-dir={self.root}")
        self.address = f"{self._node_ip()}:{port}"

    def _start(self, *args: str) -> None:
        proc = subprocess.run([self.ray, "start", *args, "--disable-usage-stats"], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    def _node_ip(self) -> str:
        from ray._private import services

        return services.get_node_ip_address()

    def add_node(self) -> int:
        """A worker node with one CPU; its raylet's port, which names it."""
        port = _free_port()
        self._start(f"--address={self.address}", "--num-cpus=1", f"--node-manager-port={port}")
        return port

    def kill_node(self, port: int) -> None:
        """SIGKILL the raylet of the node started on ``port`` and the trial workers it started."""
        raylets = [pid for pid in _processes_under(self.root)
                   if f"--node_manager_port={port}" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()]
        assert len(raylets) == 1, raylets
        children = subprocess.run(["pgrep", "-P", str(raylets[0])], capture_output=True, text=True, check=False).stdout.split()
        for pid in [raylets[0], *map(int, children)]:
            os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for pid in _processes_under(self.root):  # this cluster only, not another test's Ray
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Ray is needed under CI=true (pip install effml[ray])")
        pytest.skip("Ray is not installed (pip install effml[ray])")
    started = Cluster(tmp_path_factory.mktemp("ray"))
    try:
        started.start_head()
        yield started
    finally:
        started.stop()


def _running_trial(storage: str):
    try:
        trials = load_study(storage, "tiny").get_trials(states=(State.RUNNING,))
    except Exception:  # noqa: BLE001 - the study is not created yet
        return None
    return trials[0] if trials else None


def test_a_search_on_a_ray_cluster_survives_a_dying_worker_node(tmp_path, cluster):
    first = cluster.add_node()
    config = _config(tmp_path, trials=TRIALS, workers=1, runner="ray", ray_address=cluster.address)
    cfg = yaml.safe_load(config.read_text())
    cfg["proxy"]["train"]["max_steps"] = 30  # trials of seconds: the node is killed inside one
    config.write_text(yaml.safe_dump(cfg))
    storage = str(tmp_path / "out" / "search.db")
    log = tmp_path / "search.log"
    with log.open("w") as out:
        driver = subprocess.Popen([str(Path(sys.executable).parent / "effml"), "search", str(config)], cwd=tmp_path,
                                  env=cluster.env, stdout=out, stderr=subprocess.STDOUT)
    try:
        victim = wait_for("a trial running on the first node", lambda: _running_trial(storage), [log])
        cluster.add_node()  # where the study goes on
        cluster.kill_node(first)
        assert driver.wait(timeout=400) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    study = load_study(storage, "tiny")
    assert len(study.get_trials(states=(State.COMPLETE,))) == TRIALS
    assert all("metrics" in t.user_attrs for t in study.get_trials(states=(State.COMPLETE,)))
    lost = study.trials[victim.number]
    assert lost.state == State.FAIL, log.read_text()[-3000:]
    assert "died" in lost.user_attrs["error"], lost.user_attrs["error"]
    assert "Traceback" not in log.read_text()


def test_a_cluster_that_cannot_be_reached_is_one_clear_error(tmp_path, cluster):
    config = _config(tmp_path, trials=1, workers=1, runner="ray", ray_address=cluster.address)
    env = {**cluster.env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "no-token")}  # the driver lacks the token
    proc = subprocess.run([str(Path(sys.executable).parent / "effml"), "search", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith(f"error: cannot connect to the Ray cluster at search.ray_address="
                                  f"'{cluster.address}'"), proc.stderr[-3000:]
