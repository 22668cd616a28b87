"""One notifier's way to Slack and back to the outbox: every Web API call goes through the
process's rate gate and comes back as an answer, a `Retry` or a `Permanent` (the SDK's own
retries are off: ours are per row); every write about a row is a transaction of its own
that queues for SQLite's write lock like the HTTP workers' acks; a failed attempt is settled
as the retry policy says (tried again later, waited out, or given up where people see it)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import Engine
from sqlmodel import Session

from bot.links import Signer
from bot.slack.notifier_tunables import Tunables
from bot.slack.rate_gate import RateGate, gate_for, method_name
from bot.slack.retry_policy import GiveUp, Retry, after_failure, classify
from executor.monitoring import metrics
from storage import outbox
from storage.db import transaction, writer_turn
from storage.installation import installation_id
from storage.models import Outbox, Task, utcnow
from storage.tasks import record

log = logging.getLogger("bot.slack.notifier")


class TakenOver(Exception):
    """Our lease on a row ran out and another notifier claimed it: leave it to them."""


@dataclass
class Delivery:
    engine: Engine
    client: WebClient  # build with retry_handlers=[]: retries are ours, per row
    tunables: Tunables
    signer: Signer | None = None  # page links (Open buttons, the diff file's comment)
    gate: RateGate | None = None  # None: the process's gate for this client's workspace
    install: str = ""  # this installation's id: tells its posts from another's
    _last_post: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Tells this installation's posts from another's in the same channel (row ids clash).
        self.install = installation_id(self.engine)
        if self.gate is None:
            self.gate = gate_for(str(self.client.base_url), str(self.client.token or ""))

    def call(self, method: Any, **params: Any) -> Any:
        """`method(**params)` once the rate gate lets it; a failure raised as `Retry` or
        `Permanent` (retry_policy.classify)."""
        assert self.gate is not None
        name = method_name(method)
        wait, probe = self.gate.enter(name)
        if wait > 0:  # Slack said to wait (or another call is finding out): no call yet
            raise Retry("ratelimited", wait, answered=True, rate_limited=True)
        limited_s: float | None = None
        ok = False
        try:
            answer = method(**params)
            ok = True
            return answer
        except SlackApiError as exc:
            response = exc.response
            error = str(response.get("error") or f"HTTP {response.status_code}")
            failure = classify(
                response.status_code,
                error,
                response.headers,
                rate_limit_default_s=self.tunables.rate_limit_default_s,
            )
            if isinstance(failure, Retry) and failure.rate_limited:
                limited_s = failure.after_s
                metrics.SLACK_RATE_LIMITED.labels(name).inc()
                log.info("Slack rate limits %s: waiting %.1f s", name, limited_s)
            else:
                ok = response.status_code < 500  # answered, and not rate limited
            raise failure from None
        except (OSError, TimeoutError) as exc:  # URLError, refused, reset, timed out
            raise Retry(f"{type(exc).__name__}: {exc}", answered=False) from None
        finally:
            self.gate.leave(name, probe=probe, limited_s=limited_s, ok=ok)

    def hold(self, row: Outbox, session: Session | None = None) -> None:
        """Renew our lease on `row`, or raise `TakenOver` (outbox.renew)."""
        if session is None:
            with self.transaction() as own:
                return self.hold(row, own)
        if not outbox.renew(session, row, lease_s=self.tunables.lease_s):
            raise TakenOver(f"outbox row {row.id}")

    def pace_channel(self, channel: str) -> None:
        """Keep to about one post per second per channel; sleeping briefly is cheaper than
        a round trip through the database for such short waits."""
        wait = self._last_post.get(channel, -1e9) + self.tunables.channel_interval_s
        if (left := wait - time.monotonic()) > 0:
            time.sleep(left)
        self._last_post[channel] = time.monotonic()

    def task_page(self, task: Task) -> str | None:
        """A signed link to the task's page for whoever sees the card (its channel)."""
        if self.signer is None or task.id is None:
            return None
        return self.signer.task_url(task.id, f"channel:{task.channel}")

    def sent(self, row: Outbox) -> None:
        lag = (utcnow() - row.created_at).total_seconds()
        metrics.SLACK_LAG.labels(row.kind).observe(max(0.0, lag))

    def retry(self, row: Outbox, task: Task | None, exc: Retry) -> None:
        """A failed attempt: try again later, wait a rate limit out, or give up."""
        assert row.id is not None
        age = (utcnow() - row.created_at).total_seconds()
        step = after_failure(exc, attempts=row.attempts, age_s=age, t=self.tunables)
        if isinstance(step, GiveUp):
            self.fail(row, task, step.error, why=step.why)
            return
        at = utcnow() + timedelta(seconds=step.after_s)
        if step.rate_limited:
            log.debug("outbox row %s: rate limited; waiting until %s", row.id, at)
            self.settle(lambda s: outbox.rate_limited(s, row.id, at=at, not_sent=exc.not_sent))
            return
        metrics.SLACK_ERRORS.labels("transient").inc()
        log.info("outbox row %s: %s; retrying in %.1f s", row.id, exc.error, step.after_s)
        self.settle(
            lambda s: outbox.retry_later(s, row.id, error=exc.error, at=at, not_sent=exc.not_sent)
        )

    def fail(self, row: Outbox, task: Task | None, error: str, *, why: str = "refused") -> None:
        """Give the row up for good, visibly: a warning, the given-up metric (`why`: refused,
        attempts, too_old), the row's `given_up_at` (doctor) and the task's log."""
        assert row.id is not None
        metrics.SLACK_ERRORS.labels("permanent").inc()
        metrics.SLACK_GIVEN_UP.labels(why).inc()
        if task is None or task.id is None:  # a post: the row itself keeps the error
            log.warning("outbox row %s (%s): %s; given up", row.id, row.kind, error)
            self.settle(lambda s: outbox.give_up(s, row.id, error=error))
            return
        log.warning(
            "outbox row %s (%s) for task %s: %s; given up", row.id, row.kind, task.id, error
        )

        def settle(session: Any) -> None:
            outbox.give_up(session, row.id, error=error)
            record(
                session,
                task.id,
                "slack_error",
                {"kind": row.kind, "error": error, "channel": task.channel},
            )

        self.settle(settle)

    def defer(self, row: Outbox, seconds: float) -> None:
        """Not yet: no attempt is counted."""
        at = utcnow() + timedelta(seconds=max(0.0, seconds))
        self.settle(lambda s: outbox.defer(s, row.id, at=at))

    def give_up(self, row: Outbox, error: str) -> None:
        """Settle the row unsent, quietly (nothing left to deliver it to)."""
        self.settle(lambda s: outbox.give_up(s, row.id, error=error))

    def delivered(self, row: Outbox) -> None:
        self.settle(lambda s: outbox.mark_delivered(s, row.id))

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Every notifier transaction queues with the HTTP workers' acks for SQLite's write
        lock (`writer_turn`): left to SQLite's busy handler, an ack that met one of ours
        slept in growing steps while holding its own writers' turn."""
        with writer_turn(self.engine), transaction(self.engine) as session:
            yield session

    def settle(self, write: Callable[[Session], object]) -> None:
        with self.transaction() as session:
            write(session)
