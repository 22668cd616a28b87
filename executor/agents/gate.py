"""The outage gate of one model endpoint, shared by every thread of an executor process (its
workers share one `LLMClient`, and the client owns the gate): while the endpoint keeps
failing, one request at a time probes it and the others wait here instead of sending.
The decisions are `executor/agents/outage.py`'s; this adds the lock, the clock and the sleep."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from executor.agents.outage import Admit, Backoff, Outage


class WindowOver(Exception):
    """The caller's deadline passed while the endpoint was still failing."""


class Gate:
    def __init__(
        self,
        backoff: Backoff,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._state = Outage(backoff)
        self._cond = threading.Condition()
        self._clock, self._jitter = clock, jitter

    @property
    def failing(self) -> bool:
        with self._cond:
            return self._state.failing

    @property
    def last_failure(self) -> str:
        with self._cond:
            return self._state.last

    def enter(
        self,
        *,
        deadline: Callable[[], float],
        tick_s: float,
        tick: Callable[[], None],
    ) -> bool:
        """Wait until this caller may send; True if its request is the outage's probe (report
        it with `failed`, `answered` or `abandoned`). `deadline()` (monotonic) is read at
        each wake-up, `tick()` is called at least every `tick_s` while waiting, outside the
        lock (it may raise: a cancel). Raises WindowOver once the deadline passed."""
        while True:
            with self._cond:
                got = self._state.admit(self._clock())
                if got is Admit.SEND:
                    return False
                if got is Admit.PROBE:
                    return True
                assert isinstance(got, float)
                left = deadline() - self._clock()
                if left <= 0:
                    raise WindowOver(self._state.last)
                self._cond.wait(min(got, left, tick_s))
            tick()

    def failed(self, what: str, *, probe: bool, retry_after: float | None = None) -> None:
        with self._cond:
            self._state.failed(
                self._clock(), what, probe=probe, retry_after=retry_after, jitter=self._jitter()
            )
            self._cond.notify_all()

    def answered(self) -> None:
        with self._cond:
            self._state.answered()
            self._cond.notify_all()

    def abandoned(self, probe: bool) -> None:
        with self._cond:
            self._state.abandoned(probe)
            self._cond.notify_all()
