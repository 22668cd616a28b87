"""Waiting on a condition instead of sleeping: the one `wait_for` every test uses."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.05


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    message: str | Callable[[], str] = "the condition",
) -> T:
    """Poll `predicate` until it returns something truthy and return that; fail the test with
    `message` (what was awaited; a callable is asked only then, e.g. for a process's log)
    once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            said = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:g} s waiting for {said}")
        time.sleep(POLL_S)
