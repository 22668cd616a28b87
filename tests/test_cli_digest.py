"""`nightcrew digest` and `nightcrew schedule …` in a real git repo, in-process."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from executor.config import crontime
from storage.db import make_engine, sqlite_url, transaction
from storage.lifecycle import State
from storage.models import Schedule, utcnow
from tests.cli_fixtures import Cli
from tests.digest_fixtures import put_task


def test_digest_prints_the_day_and_an_empty_one_in_one_line(cli: Cli) -> None:
    empty = cli.ok("digest").strip()
    assert empty.startswith("nothing happened since") and "\n" not in empty
    engine = make_engine(sqlite_url(cli.home))
    now = utcnow()
    # Inside the digest's window, which opened at the default cron's last 08:00 UTC: maybe
    # only seconds ago, so the tasks are spread between then (or ten minutes ago) and now.
    opened = crontime.latest_fire(crontime.trigger("0 8 * * *", "UTC"), now)
    assert opened is not None
    start = max(opened, now - timedelta(minutes=10))
    step = (now - start) / 4
    with transaction(engine) as s:
        put_task(s, State.AWAITING_APPROVAL, start + step, risk="high", channel=None)
        put_task(s, State.FAILED, start + 2 * step, prompt="port it", reason="boom")
        put_task(s, State.QUEUED, start + 3 * step, prompt="write docs")
    engine.dispose()
    shown = cli.ok("digest")
    for expected in (
        "awaiting approval (riskiest first): 1",
        "risk high; checks 0/1 passed",
        "failed: 1",
        "port it",
        "boom",
        "write docs  [queued]",
        "merged: none",
        "totals: 3 tasks",
    ):
        assert expected in shown, expected
    assert "write docs" not in cli.ok("digest", "--mine")  # the local user asked for none


def test_schedule_add_list_pause_resume_delete(cli: Cli) -> None:
    added = cli.ok("schedule", "add", "0 9 * * 1", "update the dependencies", "--tz", "UTC")
    assert added.startswith("added schedule 1: `0 9 * * 1` (UTC) on app, next ")
    assert "update the dependencies" in cli.ok("schedule", "list")
    assert cli.ok("schedule", "pause", "1").strip() == "schedule 1 paused"
    assert ", paused:" in cli.ok("schedule", "list")
    assert cli.ok("schedule", "resume", "1").strip() == "schedule 1 resumed"
    engine = make_engine(sqlite_url(cli.home))
    with transaction(engine) as s:
        (schedule,) = s.exec(select(Schedule)).all()
    engine.dispose()
    assert (schedule.repo, schedule.creator.startswith("local:"), schedule.paused) == (
        "app",
        True,
        False,
    )
    assert "deleted" in cli.ok("schedule", "delete", "1")
    assert "no schedules" in cli.ok("schedule", "list")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("schedule", "add", "0 9 * *", "bump"), "bad cron expression"),
        (("schedule", "add", "@daily", "bump", "--tz", "Nowhere/Land"), "unknown timezone"),
        (("schedule", "add", "@daily", "bump", "--repo", "web"), "unknown repo 'web'"),
        (("schedule", "pause", "7"), "no schedule 7"),
    ],
)
def test_bad_schedule_commands_say_why_and_write_nothing(
    cli: Cli, args: tuple[str, ...], says: str
) -> None:
    cli.ok("ls")  # create the database
    assert says in cli.fails(*args)
