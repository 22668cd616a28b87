"""Scheduled tasks: the rows, and the one query that needs care, `claim_firing`: a
compare-and-swap on `last_fired_at`, so of several processes that see the same fire time due,
exactly one queues its task."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from storage.errors import StorageError
from storage.models import Schedule, utcnow


class ScheduleNotFound(StorageError):
    def __init__(self, schedule_id: int) -> None:
        super().__init__(f"no schedule {schedule_id}; see `/agent schedule list`")
        self.schedule_id = schedule_id


def create_schedule(
    session: Session,
    *,
    cron: str,
    timezone: str,
    repo: str,
    prompt: str,
    creator: str,
    channel: str | None = None,
) -> Schedule:
    schedule = Schedule(
        cron=cron, timezone=timezone, repo=repo, prompt=prompt, creator=creator, channel=channel
    )
    session.add(schedule)
    session.flush()
    return schedule


def get_schedule(session: Session, schedule_id: int) -> Schedule:
    schedule = session.get(Schedule, schedule_id, populate_existing=True)
    if schedule is None:
        raise ScheduleNotFound(schedule_id)
    return schedule


def list_schedules(session: Session, *, active_only: bool = False) -> Sequence[Schedule]:
    query = select(Schedule).order_by(col(Schedule.id))
    if active_only:
        query = query.where(col(Schedule.paused).is_(False))
    return session.exec(query).all()


def set_paused(
    session: Session, schedule_id: int, paused: bool, *, now: datetime | None = None
) -> Schedule:
    """Pause or resume. Resuming counts from `now`: fire times missed while paused are
    skipped, not fired at once."""
    schedule = get_schedule(session, schedule_id)
    if schedule.paused and not paused:
        now = now or utcnow()
        schedule.last_fired_at = max(schedule.last_fired_at or now, now)
    schedule.paused = paused
    session.add(schedule)
    return schedule


def delete_schedule(session: Session, schedule_id: int) -> Schedule:
    schedule = get_schedule(session, schedule_id)
    session.delete(schedule)
    return schedule


def claim_firing(session: Session, schedule_id: int, fire_at: datetime) -> bool:
    """Mark `fire_at` as fired for the schedule; False if it is paused, gone, or that fire time
    (or a later one) was already fired, by this process or another."""
    since = func.coalesce(col(Schedule.last_fired_at), col(Schedule.created_at))
    won = session.execute(
        update(Schedule)
        .where(
            col(Schedule.id) == schedule_id,
            col(Schedule.paused).is_(False),
            since < fire_at,
        )
        .values(last_fired_at=fire_at)
        .returning(Schedule.id)
    ).first()
    return won is not None


def fired(session: Session, schedule_id: int, task_id: int) -> None:
    session.execute(
        update(Schedule).where(col(Schedule.id) == schedule_id).values(last_task_id=task_id)
    )
