"""A throw-away PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` of Debian's
``postgresql`` package in a temporary folder, listening on a Unix socket there only (no TCP port),
run as the ``postgres`` user when the tests run as root (PostgreSQL refuses root). Skipped where
no server can be started, but never under ``CI=true``: there it must run."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL server needed under CI=true: {why}")
    pytest.skip(why)


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database ``effml`` on a fresh server, stopped at the end."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed (pip install effml[postgres])")
    bin_dir = _binaries()
    if bin_dir is None:
        _unavailable("no PostgreSQL server binaries (apt-get install postgresql)")
    root = tmp_path_factory.mktemp("postgres")
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(root, 0o755)
        for parent in root.parents:  # the server user must reach its folder
            if parent != Path("/"):
                os.chmod(parent, os.stat(parent).st_mode | 0o711)
    env = {**os.environ, "LC_ALL": "C"}
    run = lambda *cmd: subprocess.run(_as_server_user([str(bin_dir / cmd[0]), *cmd[1:]]),  # noqa: E731
                                      capture_output=True, text=True, env=env, timeout=120)
    done = run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    if done.returncode != 0:
        _unavailable(f"initdb failed: {done.stderr.strip()[-500:]}")
    options = f"-k {sock} -c listen_addresses='' -c fsync=off"
    done = run("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "start")
    if done.returncode != 0:
        _unavailable(f"pg_ctl start failed: {done.stderr.strip()[-500:]}")
    try:
        done = run("createdb", "-h", str(sock), "-U", "postgres", "effml")
        assert done.returncode == 0, done.stderr
        yield f"postgresql+psycopg2://postgres@/effml?host={sock}"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")
