"""Sending the digest: which fire time is due for which target, and queueing it once.

A target is a configured channel (everything) or a person who subscribed (their own tasks, by
DM). For each, the due fire time is the latest one <= now; it is sent if no digest for that
(target, fire time) was recorded yet. The record and the outbox row are written in one
transaction, so a digest goes out once whatever the number of bot processes, a restart after
a missed time sends the latest one once (covering everything since the last one sent), and
delivery gets the notifier's retries. A target that never had a digest only gets one whose
time is at most `FIRST_GRACE` old: a fresh install does not open with a stale digest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import Session

from bot.slack import digest as render
from bot.slack.blocks import Block
from executor.config import crontime
from executor.config.schema import Config
from storage import digests
from storage.db import transaction
from storage.digests import DigestData

FIRST_GRACE = timedelta(minutes=15)


@dataclass(frozen=True)
class Sent:
    target: str
    fire_at: datetime
    data: DigestData


def targets(session: Session, config: Config) -> list[tuple[str, str | None]]:
    """(Slack channel to post to, requester to filter on): channels see everything, a
    subscriber gets a DM with their own tasks."""
    found: list[tuple[str, str | None]] = [(c, None) for c in config.digest.channels]
    found += [(u, u) for u in digests.subscribers(session)]
    return found


def send_due(engine: Engine, config: Config, now: datetime) -> list[Sent]:
    """Queue every digest due at `now` that nobody queued yet; what this call queued."""
    cron = crontime.trigger(config.digest.cron, config.digest.timezone)
    fire = crontime.latest_fire(cron, now)
    if fire is None:
        return []
    tz = ZoneInfo(config.digest.timezone)
    sent: list[Sent] = []
    with transaction(engine) as session:
        for target, requester in targets(session, config):
            last = digests.last_run(session, target)
            if last is not None and last >= fire:
                continue
            if last is None and now - fire > FIRST_GRACE:
                continue
            if not digests.claim_run(session, target, fire):
                continue  # another process got there first
            since = last or crontime.previous_fire(cron, fire) or fire - timedelta(days=1)
            data = digests.collect(session, since, fire, requester=requester)
            title = "Your nightcrew digest" if requester else "nightcrew digest"
            text, blocks = render.render(data, tz=tz, title=title)
            digests.queue_post(session, target, text, blocks)
            sent.append(Sent(target, fire, data))
    return sent


def on_demand(
    session: Session, config: Config, now: datetime, *, requester: str | None = None
) -> tuple[DigestData, str, list[Block]]:
    """The digest as it would be now: since the last scheduled one (to any configured
    channel, or to `requester`), else since the previous fire time. Records nothing."""
    cron = crontime.trigger(config.digest.cron, config.digest.timezone)
    if requester:
        since = digests.last_run(session, requester)
    else:
        since = digests.last_run_any(session, config.digest.channels)
    since = since or crontime.latest_fire(cron, now) or now - timedelta(days=1)
    data = digests.collect(session, since, now, requester=requester)
    title = "Your tasks since the last digest" if requester else "nightcrew digest (so far)"
    text, blocks = render.render(data, tz=ZoneInfo(config.digest.timezone), title=title)
    return data, text, blocks
