"""The clock of the bot process: APScheduler runs the digest at its cron time (in the
configured time zone), fires scheduled tasks, and catches up once at start.

APScheduler only decides *when* to look; *what* to send is decided from the database
(`digest.send_due`, `schedules.fire_due`), so a job that runs late, twice, or in two
processes at once sends nothing twice. Schedules are polled (they are added at run time, by
any process): a firing is at most `POLL_S` late; the poll also retries a digest whose run
failed. Old Slack delivery keys are forgotten here too (`PRUNE_S`), off every ack's path."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from bot import schedules
from bot.slack import digest_send as digest
from executor.config import crontime
from executor.config.schema import Config
from storage import deliveries
from storage.db import transaction, writer_turn
from storage.models import utcnow

log = logging.getLogger(__name__)

POLL_S = 20.0  # scheduled tasks: crons have minute resolution; a third of one is close enough
PRUNE_S = 3600.0  # Slack delivery keys are kept a day (storage.deliveries.KEEP): hourly is plenty


@dataclass
class Tick:
    digests: list[digest.Sent] = field(default_factory=list)
    fired: list[schedules.Fired] = field(default_factory=list)


@dataclass
class Scheduler:
    engine: Engine
    config: Callable[[], Config]
    clock: Callable[[], datetime] = utcnow
    poll_s: float = POLL_S
    digests: bool = True  # off when Slack is not connected: nobody would deliver them
    _aps: BackgroundScheduler | None = None

    def tick(self) -> Tick:
        """Everything due now: digests, then scheduled tasks."""
        return Tick(self.send_digests(), self.fire_schedules())

    def send_digests(self) -> list[digest.Sent]:
        if not self.digests:
            return []
        sent = digest.send_due(self.engine, self.config(), self.clock())
        for one in sent:
            log.info("digest for %s queued (%s)", one.target, one.fire_at.isoformat())
        return sent

    def fire_schedules(self) -> list[schedules.Fired]:
        fired = schedules.fire_due(self.engine, self.config(), self.clock())
        for one in fired:
            log.info("schedule %s fired: task %s", one.schedule_id, one.task_id)
        return fired

    def prune_deliveries(self) -> int:
        """Forget Slack delivery keys older than a day, in the writers' turn (SQLite: acks
        queue behind it without sleeping)."""
        with writer_turn(self.engine), transaction(self.engine) as session:
            return deliveries.prune(session, self.clock())

    def start(self) -> None:
        """Start the background thread: a catch-up tick now, the digest at its cron times,
        scheduled tasks every `poll_s` seconds, old delivery keys pruned hourly."""
        cfg = self.config().digest
        aps = BackgroundScheduler(timezone=cfg.timezone)
        common = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        aps.add_job(
            self._safely(self.send_digests),
            crontime.trigger(cfg.cron, cfg.timezone),
            id="digest",
            **common,
        )
        # The poll looks at digests too: one that failed (database down at 08:00) is retried
        # within `poll_s` rather than a day later; when nothing is due it costs one read.
        # Its first run is at once: the catch-up after a restart. (Not a one-shot job of its
        # own: APScheduler 3 races removing a finished one-shot job against a quick shutdown.)
        aps.add_job(
            self._safely(self.tick),
            "interval",
            seconds=self.poll_s,
            id="poll",
            next_run_time=datetime.now(UTC),
            **common,
        )
        aps.add_job(
            self._safely(self.prune_deliveries),
            "interval",
            seconds=PRUNE_S,
            id="prune",
            next_run_time=datetime.now(UTC),
            **common,
        )
        aps.start()
        self._aps = aps

    def __enter__(self) -> Scheduler:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._aps is not None:
            self._aps.shutdown(wait=True)
            self._aps = None

    @staticmethod
    def _safely(job: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                job()
            except Exception:  # a database hiccup must not stop the clock; the next run retries
                log.exception("scheduled job failed")

        return run
