"""What a failed Slack call means and what follows, as pure logic: which answers go away by
themselves and which are final, how long a 429 says to wait, and after a failed attempt
whether the row is tried again (when), waited out (rate limited) or given up (why).

A 429 is not a failed attempt: the row waits it out until it is older than `max_age_s`.
Other transient failures (5xx, connection errors, Slack's own transient errors) are retried
with a doubling backoff, `max_attempts` times at most."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.slack.notifier_tunables import Tunables

# Errors Slack may answer with HTTP 200 that go away by themselves; any other error is final.
TRANSIENT_ERRORS = {
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
}
# Slack: with these "some aspect of the operation" may have succeeded.
MAYBE_DONE = {"internal_error", "fatal_error"}
# chat.update answers meaning this card can never be edited again: post a fresh one.
EDIT_REFUSED = {"cant_update_message", "edit_window_closed"}  # the message is still there
CARD_GONE = {"message_not_found", "channel_not_found", "is_archived"}


class Retry(Exception):
    """A failure worth another attempt."""

    def __init__(
        self,
        error: str,
        after_s: float | None = None,
        *,
        answered: bool,
        rate_limited: bool = False,
    ) -> None:
        super().__init__(error)
        self.error, self.after_s = error, after_s
        self.answered = answered  # Slack said it did not do it (429, an error), vs no answer
        self.not_sent = False  # set for a post Slack answered: no need to look for it later
        self.rate_limited = rate_limited  # wait `after_s`; not a failed attempt


class Permanent(Exception):
    """Slack refused for good (its error is the message): never tried again."""


def classify(
    status: int, error: str, headers: Mapping[str, Any], *, rate_limit_default_s: float
) -> Retry | Permanent:
    """Slack's answer to a failed Web API call (HTTP `status`, its `error`) as what the
    notifier does with it: wait out a rate limit, retry (knowing whether Slack may have done
    it anyway), or give up."""
    if status == 429 or error == "ratelimited":
        after = retry_after(headers)
        wait = rate_limit_default_s if after is None else after
        return Retry("ratelimited", wait, answered=True, rate_limited=True)
    if status >= 500:  # it may have been done before the failure
        return Retry(error, answered=False)
    if error in TRANSIENT_ERRORS:
        return Retry(error, answered=error not in MAYBE_DONE)
    return Permanent(error)


def retry_after(headers: Mapping[str, Any]) -> float | None:
    """Retry-After in seconds (Slack sends whole seconds), or None."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def edit_refused(error: str) -> bool:
    """Slack will never let this card be edited again: a fresh one must be posted."""
    return error in EDIT_REFUSED | CARD_GONE


def card_gone(error: str, *, in_thread: bool) -> bool:
    """The refused card was its thread's root and is gone: the fresh card starts a new thread
    (`in_thread`: the refused card was itself a fresh one posted inside the thread)."""
    return error in CARD_GONE and not in_thread


@dataclass(frozen=True)
class TryAgain:
    """Attempt the row again in `after_s` seconds; `rate_limited`: not a failed attempt."""

    after_s: float
    rate_limited: bool


@dataclass(frozen=True)
class GiveUp:
    """Give the row up for good: `error` for people, `why` for the metric (attempts,
    too_old)."""

    error: str
    why: str


def after_failure(exc: Retry, *, attempts: int, age_s: float, t: Tunables) -> TryAgain | GiveUp:
    """After a failed attempt at a row that had `attempts` failed attempts before and was
    written `age_s` seconds ago: when to try again, or why to give up."""
    if exc.rate_limited:
        if age_s >= t.max_age_s:
            return GiveUp(f"still rate limited {duration(age_s)} after it was written", "too_old")
        after = t.rate_limit_default_s if exc.after_s is None else exc.after_s
        return TryAgain(after, rate_limited=True)
    if attempts + 1 >= t.max_attempts:
        return GiveUp(f"{exc.error} (gave up after {attempts + 1} attempts)", "attempts")
    if exc.after_s is not None:
        return TryAgain(exc.after_s, rate_limited=False)
    return TryAgain(min(t.backoff_max_s, t.backoff_base_s * 2**attempts), rate_limited=False)


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
