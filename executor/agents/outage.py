"""How long to wait for a failing model endpoint, and who may ask it next: pure, no clock and
no threads (the caller passes `now`, holds the lock, and sleeps). `executor/agents/gate.py`
puts this behind a lock for the threads of one executor process.

While the endpoint keeps failing, the process sends one request at a time (the probe); the
others wait for its answer. Each failed probe doubles the wait before the next, up to a cap;
the first answer of any kind opens the way for everybody."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """`first_s`, doubling per failed probe up to `max_s`."""

    first_s: float = 1.0
    max_s: float = 60.0

    def delay(self, step: int, retry_after: float | None = None, jitter: float = 0.0) -> float:
        """The wait before probe `step + 1`. `jitter` in [0, 1) takes up to a quarter off, so
        executors that saw the same failure do not probe in step; a longer `Retry-After` from
        the server wins, capped at `max_s` (a task should not stall an hour on one header)."""
        wait = min(self.max_s, self.first_s * 2 ** min(step, 64)) * (1 - jitter / 4)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_s))
        return wait

    def probes_within(self, seconds: float, jitter: float = 0.0) -> int:
        """How many probes an outage of `seconds` sees (for tests and benches)."""
        at, step = self.delay(0, jitter=jitter), 0
        while at < seconds:
            step += 1
            at += self.delay(step, jitter=jitter)
        return step


class Admit(enum.Enum):
    SEND = "send"  # the endpoint is fine: send as usual
    PROBE = "probe"  # the endpoint is failing and it is this caller's turn to try it


@dataclass
class Outage:
    """The endpoint as this process sees it: healthy (`since` None) or failing since `since`,
    with the next probe due at `next_probe_at` and maybe one under way (`probing`)."""

    backoff: Backoff
    since: float | None = None
    step: int = 0  # failed probes so far in this outage
    next_probe_at: float = 0.0
    probing: bool = False
    failures: int = 0
    last: str = ""  # the last failure, in words

    @property
    def failing(self) -> bool:
        return self.since is not None

    def admit(self, now: float) -> Admit | float:
        """SEND, PROBE (the caller must report how it went), or how long to wait before asking
        again (`inf`: until the probe under way answers)."""
        if self.since is None:
            return Admit.SEND
        if self.probing:
            return math.inf
        if now >= self.next_probe_at:
            self.probing = True
            return Admit.PROBE
        return self.next_probe_at - now

    def failed(
        self,
        now: float,
        what: str,
        *,
        probe: bool,
        retry_after: float | None = None,
        jitter: float = 0.0,
    ) -> None:
        """A request failed in a way that says the endpoint is away. The first such failure
        starts an outage; a failed probe makes the next wait longer; a request that was already
        under way when the outage began changes nothing (but a longer Retry-After)."""
        self.failures += 1
        self.last = what
        if self.since is None:
            self.since, self.step, self.probing = now, 0, False
            self.next_probe_at = now + self.backoff.delay(0, retry_after, jitter)
        elif probe:
            self.step += 1
            self.probing = False
            self.next_probe_at = now + self.backoff.delay(self.step, retry_after, jitter)
        elif retry_after is not None:
            later = now + min(retry_after, self.backoff.max_s)
            self.next_probe_at = max(self.next_probe_at, later)

    def answered(self) -> None:
        """The endpoint answered (a reply, or a refusal: it is there): everybody may send."""
        self.since, self.step, self.probing, self.failures, self.last = None, 0, False, 0, ""
        self.next_probe_at = 0.0

    def abandoned(self, probe: bool) -> None:
        """A request ended with no word on the endpoint (the caller stopped, a bug): if it was
        the probe, the next caller probes now."""
        if probe:
            self.probing = False
