"""Scheduled tasks, whatever the front end: add, list, pause, resume, delete, and firing.

Each firing queues a normal task (requested by the schedule's creator, in the channel the
schedule was created from). Firing is idempotent per fire time (`claim_firing` is a
compare-and-swap on `last_fired_at`): several bot processes queue it once; after downtime
only the latest missed fire time is fired, once. A new schedule fires first at its next fire
time, never for times before it existed."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import Session

from bot import actions
from bot.actions import ActionError
from executor.config import crontime
from executor.config.schema import Config, ConfigError
from storage import schedules
from storage.db import transaction
from storage.digests import queue_post
from storage.models import Schedule
from storage.tasks import record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fired:
    schedule_id: int
    fire_at: datetime
    task_id: int | None  # None: the schedule could not queue its task (reason told)


def add(
    session: Session,
    config: Config,
    *,
    cron: str,
    prompt: str,
    creator: str,
    repo: str | None = None,
    channel: str | None = None,
    timezone: str | None = None,
) -> Schedule:
    tz = timezone or config.digest.timezone
    try:
        crontime.trigger(cron, tz)
    except crontime.CronError as exc:
        raise ActionError(str(exc)) from None
    try:
        repo_name = config.repo_for(repo, channel=channel)
    except ConfigError as exc:
        raise ActionError(str(exc)) from None
    text = actions.clean_text(prompt, what="prompt")
    return schedules.create_schedule(
        session,
        cron=cron.strip(),
        timezone=tz,
        repo=repo_name,
        prompt=text,
        creator=creator,
        channel=channel,
    )


def check_may_change(schedule: Schedule, actor: str, config: Config) -> None:
    repo = config.repos.get(schedule.repo)
    approvers: Collection[str] = repo.approvers if repo else ()
    if actor != schedule.creator and actor not in approvers:
        raise ActionError(
            f"only the creator ({schedule.creator}) or an approver of {schedule.repo} may "
            f"change schedule {schedule.id}"
        )


def pause(
    session: Session,
    config: Config,
    schedule_id: int,
    *,
    actor: str,
    paused: bool,
    now: datetime | None = None,
) -> str:
    """Pause, or resume (from `now`: what was missed meanwhile does not fire)."""
    schedule = schedules.get_schedule(session, schedule_id)
    check_may_change(schedule, actor, config)
    schedules.set_paused(session, schedule_id, paused, now=now)
    return f"schedule {schedule_id} {'paused' if paused else 'resumed'}"


def delete(session: Session, config: Config, schedule_id: int, *, actor: str) -> str:
    schedule = schedules.get_schedule(session, schedule_id)
    check_may_change(schedule, actor, config)
    schedules.delete_schedule(session, schedule_id)
    return f"schedule {schedule_id} deleted; tasks it queued are not touched"


def describe(schedule: Schedule, now: datetime) -> str:
    """One line: id, cron, zone, repo, next run in that zone (or paused), prompt."""
    if schedule.paused:
        when = "paused"
    else:
        fire = crontime.next_fire(crontime.trigger(schedule.cron, schedule.timezone), now)
        local = fire.astimezone(ZoneInfo(schedule.timezone)) if fire else None
        when = f"next {local:%a %Y-%m-%d %H:%M}" if local else "never fires"
    prompt = " ".join(schedule.prompt.split())
    prompt = prompt if len(prompt) <= 80 else prompt[:79] + "…"
    return (
        f"{schedule.id}: `{schedule.cron}` ({schedule.timezone}) on {schedule.repo}, {when}: "
        f"{prompt}"
    )


def fire_due(engine: Engine, config: Config, now: datetime) -> list[Fired]:
    """Queue a task for every active schedule whose latest fire time <= now is newer than
    its last firing (or its creation). One transaction per schedule, so one broken schedule
    does not hold up the others."""
    with transaction(engine) as session:
        active: Sequence[Schedule] = schedules.list_schedules(session, active_only=True)
    fired: list[Fired] = []
    for schedule in active:
        assert schedule.id is not None
        try:
            cron = crontime.trigger(schedule.cron, schedule.timezone)
        except crontime.CronError:
            log.warning("schedule %s: unusable cron %r; skipped", schedule.id, schedule.cron)
            continue
        fire = crontime.latest_fire(cron, now, after=schedule.last_fired_at or schedule.created_at)
        if fire is None:
            continue
        with transaction(engine) as session:
            if not schedules.claim_firing(session, schedule.id, fire):
                continue  # another process fired it, or it was paused meanwhile
            fired.append(_fire(session, config, schedule, fire))
    return fired


def _fire(session: Session, config: Config, schedule: Schedule, fire: datetime) -> Fired:
    assert schedule.id is not None
    if schedule.repo not in config.repos:
        problem = (
            f":warning: schedule {schedule.id} did not run: repo `{schedule.repo}` is no longer "
            "configured; delete it with `/agent schedule delete "
            f"{schedule.id}`"
        )
        log.warning("%s", problem)
        if schedule.channel:
            queue_post(session, schedule.channel, problem, [])
        return Fired(schedule.id, fire, None)
    if config.users and schedule.creator not in config.users and schedule.channel:
        # The creator may no longer add tasks (`users:` changed): nor may their schedule.
        problem = (
            f":warning: schedule {schedule.id} did not run: its creator <@{schedule.creator}> "
            "may no longer add tasks (`users:` in nightcrew.yaml); delete it with "
            f"`/agent schedule delete {schedule.id}`"
        )
        log.warning("%s", problem)
        queue_post(session, schedule.channel, problem, [])
        return Fired(schedule.id, fire, None)
    outcome = actions.add(
        session,
        repo=schedule.repo,
        prompt=schedule.prompt,
        requester=schedule.creator,
        source="schedule",
        channel=schedule.channel,
    )
    assert outcome.task.id is not None
    payload = {"schedule": schedule.id, "fire_at": fire.isoformat()}
    record(session, outcome.task.id, "scheduled", payload)
    schedules.fired(session, schedule.id, outcome.task.id)
    return Fired(schedule.id, fire, outcome.task.id)
