"""``effml ARGS`` in a fresh process forked from a fork server (Python's ``forkserver`` start
method) that imported effml's command line once: a new interpreter imports torch again for every
command (about 3.5 s of CPU, most of a short one). The process gets this process's current
environment and working directory, one torch thread, and its stdout and stderr in files. The
experiments run their trainings this way and the tests their commands."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path


def run_forked(args: Sequence[str | Path], stdout: Path | str, stderr: Path | str | None = None, *,
               cwd: Path | str | None = None, timeout: float | None = None) -> int:
    """Run ``effml ARGS`` (``stderr`` None: into ``stdout`` too); its exit status. A command still
    running after ``timeout`` seconds is killed and ``subprocess.TimeoutExpired`` raised."""
    process = start_forked(args, stdout, stderr, cwd=cwd)
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
        raise subprocess.TimeoutExpired(["effml", *map(str, args)], timeout or 0)
    return process.exitcode


def start_forked(args: Sequence[str | Path], stdout: Path | str, stderr: Path | str | None = None, *,
                 cwd: Path | str | None = None) -> multiprocessing.process.BaseProcess:
    """Start ``effml ARGS`` as ``run_forked`` runs it and return at once: its process (``join``,
    ``kill``, ``exitcode``), e.g. for several commands at a time."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["effml.cli.main"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = context.Process(target=_main, name="effml", args=(
        [str(a) for a in args], str(stdout), str(stderr or stdout), env, str(cwd or Path.cwd())))
    process.start()
    return process


def _main(args: list[str], stdout: str, stderr: str, env: dict[str, str], cwd: str) -> None:
    """In the forked process: the environment, working directory and output files, then the command."""
    import sys

    import torch

    from effml.cli.main import app

    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fds, path in (((1, 2), stdout),) if stdout == stderr else (((1,), stdout), ((2,), stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for fd in fds:
            os.dup2(target, fd)
        os.close(target)
    torch.set_num_threads(1)
    sys.argv = ["effml", *args]
    app(args, prog_name="effml")  # exits with the command's status
