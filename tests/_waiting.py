"""Polling for what another process does (a study's trials, a run's files), failing with the logs
of the processes waited on when it does not happen in time."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def wait_for(what: str, check: Callable[[], Any], logs: list[Path], timeout: float = 240.0) -> Any:
    """``check()``'s first truthy result, polled every 0.3 s; the test fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}: " + " | ".join(p.read_text()[-1500:] for p in logs if p.exists()))
