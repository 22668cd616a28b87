"""Slack's rate limits are per Web API method and per workspace: a 429 on `chat.update` says
(Retry-After) when `chat.update` may be called again, by anyone holding that token. The gate
remembers that "not before" time for the whole process, so every notifier worker in it waits
it out instead of each learning it with a 429 of its own. When the time has come, one call
goes first (the probe); the others wait for its answer, so a storm that goes on costs one
429 per Retry-After, not one per waiting message."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

PROBE_WAIT_S = 0.5  # how soon a caller held back by a probe looks again
PROBE_TIMEOUT_S = 60.0  # a probe unanswered this long is taken as lost (its worker died)


@dataclass
class RateGate:
    """Per-method "not before" times (monotonic clock) and probes, shared between threads."""

    _not_before: dict[str, float] = field(default_factory=dict)
    _probe: dict[str, float] = field(default_factory=dict)  # method -> when its probe left
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self, method: str) -> tuple[float, bool]:
        """(seconds to wait before calling `method`, 0 to call now; whether this call is the
        probe of a rate-limited method, which must `leave` with its outcome)."""
        now = time.monotonic()
        with self._lock:
            until = self._not_before.get(method)
            if until is None:
                return 0.0, False
            if now < until:
                return until - now, False
            if now - self._probe.get(method, -PROBE_TIMEOUT_S) < PROBE_TIMEOUT_S:
                return PROBE_WAIT_S, False  # another call is finding out: wait for it
            self._probe[method] = now
            return 0.0, True

    def leave(self, method: str, *, probe: bool, limited_s: float | None, ok: bool) -> None:
        """A call of `method` came back: rate limited for `limited_s` (the gate closes for
        that long; a later reopening already known is kept), or `ok` (a probe's success
        opens the gate for everyone), or another failure (the next caller probes)."""
        with self._lock:
            if probe:
                self._probe.pop(method, None)
            if limited_s is not None:
                until = time.monotonic() + max(0.0, limited_s)
                self._not_before[method] = max(until, self._not_before.get(method, 0.0))
            elif ok and probe:
                self._not_before.pop(method, None)


_GATES: dict[tuple[str, str], RateGate] = {}
_GATES_LOCK = threading.Lock()


def gate_for(api_url: str, token: str) -> RateGate:
    """The process's gate for one workspace (its API address and bot token)."""
    with _GATES_LOCK:
        return _GATES.setdefault((api_url, token), RateGate())


def method_name(call: object) -> str:
    """`WebClient.chat_postMessage` → "chat.postMessage" (Slack's name: the limits' key)."""
    name = str(getattr(call, "__name__", call))
    family, _, rest = name.partition("_")
    return f"{family}.{rest}" if rest else family
