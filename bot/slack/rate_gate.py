"""Slack's rate limits are per Web API method and per workspace: a 429 on `chat.update` says
(Retry-After) when `chat.update` may be called again, by anyone holding that token. The gate
remembers that "not before" time for the whole process, so every notifier worker in it waits
it out instead of each learning it with a 429 of its own."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass
class RateGate:
    """Per-method "not before" times (monotonic clock), safe to share between threads."""

    _not_before: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_s(self, method: str) -> float:
        """Seconds until `method` may be called again (0: now)."""
        with self._lock:
            return max(0.0, self._not_before.get(method, 0.0) - time.monotonic())

    def close(self, method: str, seconds: float) -> None:
        """Slack said: no `method` for `seconds`. A later reopening already known is kept."""
        until = time.monotonic() + max(0.0, seconds)
        with self._lock:
            self._not_before[method] = max(until, self._not_before.get(method, 0.0))


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
