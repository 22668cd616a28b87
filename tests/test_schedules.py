"""Scheduled tasks against real databases with a frozen clock: each fire time queues one
normal task, whatever the restarts and the number of processes; pause, resume, delete."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update
from sqlmodel import col, select

from bot import schedules
from bot.actions import ActionError
from bot.scheduler import Scheduler
from executor.config.schema import Config
from storage.db import make_engine, transaction
from storage.lifecycle import State
from storage.models import Outbox, Schedule, TaskEvent
from storage.schedules import ScheduleNotFound, list_schedules
from tests.digest_fixtures import all_tasks as queued
from tests.digest_fixtures import config

CREATED = datetime(2026, 11, 18, 12, tzinfo=UTC)  # a Wednesday
MONDAY = datetime(2026, 11, 23, 9, tzinfo=UTC)  # the first Monday 09:00 after it


def add_weekly(engine: Engine, cfg: Config, *, channel: str | None = "C111") -> int:
    with transaction(engine) as s:
        added = schedules.add(
            s,
            cfg,
            cron="0 9 * * 1",
            prompt="update the dependencies",
            creator="U111",
            channel=channel,
            timezone="UTC",
        )
        assert added.id is not None
        s.execute(update(Schedule).where(col(Schedule.id) == added.id).values(created_at=CREATED))
        return added.id


def fire(engine: Engine, cfg: Config, now: datetime) -> list[schedules.Fired]:
    return Scheduler(engine, lambda: cfg, clock=lambda: now, digests=False).tick().fired


def test_each_fire_time_queues_one_normal_task_in_its_channel(
    engine: Engine, tmp_path: Path
) -> None:
    cfg = config(tmp_path)
    sid = add_weekly(engine, cfg)
    assert fire(engine, cfg, MONDAY - timedelta(seconds=1)) == []  # not before its first time
    (fired,) = fire(engine, cfg, MONDAY + timedelta(seconds=10))
    assert (fired.schedule_id, fired.fire_at) == (sid, MONDAY)
    assert fire(engine, cfg, MONDAY + timedelta(minutes=1)) == []  # that time is done
    (task,) = queued(engine)
    assert (task.id, task.state, task.repo, task.channel) == (
        fired.task_id,
        State.QUEUED,
        "api",
        "C111",
    )
    assert (task.requester, task.source, task.prompt) == (
        "U111",
        "schedule",
        "update the dependencies",
    )
    with transaction(engine) as s:
        kinds = [e.kind for e in s.exec(select(TaskEvent).where(TaskEvent.task_id == task.id))]
        card = s.exec(select(Outbox).where(Outbox.task_id == task.id, Outbox.kind == "card")).all()
    assert "scheduled" in kinds and len(card) == 1  # its card goes to the channel as any task's
    (next_week,) = fire(engine, cfg, MONDAY + timedelta(days=7, seconds=1))
    assert next_week.fire_at == MONDAY + timedelta(days=7) and len(queued(engine)) == 2


def test_after_downtime_only_the_latest_missed_time_fires_once(
    engine: Engine, tmp_path: Path
) -> None:
    cfg = config(tmp_path)
    add_weekly(engine, cfg)
    three_weeks = MONDAY + timedelta(days=14, hours=5)
    (fired,) = fire(engine, cfg, three_weeks)
    assert fired.fire_at == MONDAY + timedelta(days=14)
    assert fire(engine, cfg, three_weeks + timedelta(hours=1)) == []
    assert len(queued(engine)) == 1


def test_two_processes_queue_each_firing_once(engine: Engine, db_url: str, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    add_weekly(engine, cfg)
    engines = [make_engine(db_url) for _ in range(3)]
    start = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def process(own: Engine) -> None:
        start.wait()
        try:
            for minute in range(4):
                fire(own, cfg, MONDAY + timedelta(minutes=minute))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=process, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for e in engines:
        e.dispose()
    assert errors == [] and len(queued(engine)) == 1


def test_pause_resume_and_delete(engine: Engine, tmp_path: Path) -> None:
    cfg = config(tmp_path, approvers=("U999",))
    sid = add_weekly(engine, cfg)
    with transaction(engine) as s:
        with pytest.raises(ActionError, match="only the creator"):
            schedules.pause(s, cfg, sid, actor="U222", paused=True)
        assert schedules.pause(s, cfg, sid, actor="U999", paused=True) == f"schedule {sid} paused"
    assert fire(engine, cfg, MONDAY + timedelta(seconds=1)) == []
    with transaction(engine) as s:
        line = schedules.describe(s.get(Schedule, sid), MONDAY)
        assert "paused" in line and "update the dependencies" in line
        schedules.pause(s, cfg, sid, actor="U111", paused=False, now=MONDAY + timedelta(hours=1))
    # Resuming counts from now: the Monday missed while paused does not fire late.
    assert fire(engine, cfg, MONDAY + timedelta(days=1)) == []
    assert [f.fire_at for f in fire(engine, cfg, MONDAY + timedelta(days=7))] == [
        MONDAY + timedelta(days=7)
    ]
    with transaction(engine) as s:
        assert "deleted" in schedules.delete(s, cfg, sid, actor="U111")
        with pytest.raises(ScheduleNotFound, match=f"no schedule {sid}"):
            schedules.delete(s, cfg, sid, actor="U111")
        assert list_schedules(s) == []
    assert fire(engine, cfg, MONDAY + timedelta(days=14)) == [] and len(queued(engine)) == 1


@pytest.mark.parametrize(
    ("cron", "zone", "repo", "prompt", "says"),
    [
        ("0 9 * * 8", "UTC", None, "bump", "bad cron expression"),
        ("0 9 * * 1", "Moon/Base", None, "bump", "unknown timezone"),
        ("0 9 * * 1", "UTC", "web", "bump", "unknown repo 'web'"),
        ("0 9 * * 1", "UTC", None, "  \x07 ", "prompt is empty"),
    ],
)
def test_bad_schedules_are_refused_and_nothing_is_written(
    engine: Engine, tmp_path: Path, cron: str, zone: str, repo: str | None, prompt: str, says: str
) -> None:
    cfg = config(tmp_path)
    with pytest.raises(ActionError, match=says), transaction(engine) as s:
        schedules.add(s, cfg, cron=cron, prompt=prompt, creator="U1", repo=repo, timezone=zone)
    with transaction(engine) as s:
        assert list_schedules(s) == []


def test_a_schedule_whose_repo_is_gone_says_so_in_its_channel(
    engine: Engine, tmp_path: Path
) -> None:
    add_weekly(engine, config(tmp_path))
    other = Config(repos={"web": config(tmp_path).repos["api"]})
    (fired,) = fire(engine, other, MONDAY)
    assert fired.task_id is None and queued(engine) == []
    with transaction(engine) as s:
        (post,) = s.exec(select(Outbox).where(Outbox.kind == "post")).all()
    assert (
        post.payload["channel"] == "C111"
        and "repo `api` is no longer configured" in post.payload["text"]
    )


def test_a_schedule_whose_creator_may_no_longer_add_tasks_does_not_run(
    engine: Engine, tmp_path: Path
) -> None:
    add_weekly(engine, config(tmp_path))  # by U111
    cfg = config(tmp_path)
    restricted = cfg.model_copy(update={"users": ["U999"]})  # U111 was taken off `users:`
    (fired,) = fire(engine, restricted, MONDAY)
    assert fired.task_id is None and queued(engine) == []
    with transaction(engine) as s:
        (post,) = s.exec(select(Outbox).where(Outbox.kind == "post")).all()
    assert post.payload["channel"] == "C111" and "may no longer add tasks" in post.payload["text"]


def test_the_default_zone_is_the_digests(engine: Engine, tmp_path: Path) -> None:
    cfg = config(tmp_path, timezone="America/New_York")
    with transaction(engine) as s:
        added = schedules.add(s, cfg, cron="@daily", prompt="tidy", creator="U1")
        assert added.timezone == "America/New_York"
        line = schedules.describe(added, MONDAY - timedelta(days=1))
        assert "(America/New_York) on api, next Mon 2026-11-23 00:00: tidy" in line
