"""Cron arithmetic in a time zone, with instants passed in (a frozen clock): the latest fire
time at or before now, the next one, DST starting and ending."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from executor.config.crontime import CronError, latest_fire, next_fire, previous_fire, trigger

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_the_latest_fire_time_is_at_or_before_now_in_the_configured_zone() -> None:
    daily = trigger("0 8 * * *", "Europe/Berlin")  # 08:00 Berlin = 07:00 UTC in winter
    assert latest_fire(daily, utc(2026, 1, 15, 7, 0)) == utc(2026, 1, 15, 7, 0)
    assert latest_fire(daily, utc(2026, 1, 15, 6, 59)) == utc(2026, 1, 14, 7, 0)
    assert latest_fire(daily, utc(2026, 1, 15, 23, 0)) == utc(2026, 1, 15, 7, 0)
    assert next_fire(daily, utc(2026, 1, 15, 7, 0)) == utc(2026, 1, 16, 7, 0)
    assert previous_fire(daily, utc(2026, 1, 15, 7, 0)) == utc(2026, 1, 14, 7, 0)


def test_after_bounds_the_search() -> None:
    daily = trigger("0 8 * * *", "UTC")
    assert latest_fire(daily, utc(2026, 1, 15, 9), after=utc(2026, 1, 15, 8)) is None
    assert latest_fire(daily, utc(2026, 1, 15, 9), after=utc(2026, 1, 14, 9)) == utc(2026, 1, 15, 8)


def test_sparse_and_dense_crons_are_found() -> None:
    yearly = trigger("@yearly", "UTC")
    assert latest_fire(yearly, utc(2026, 11, 22, 12)) == utc(2026, 1, 1)
    every_minute = trigger("* * * * *", "UTC")
    assert latest_fire(every_minute, utc(2026, 11, 22, 12, 3, 30)) == utc(2026, 11, 22, 12, 3)
    weekly = trigger("0 9 * * 1", "UTC")  # Mondays
    assert latest_fire(weekly, utc(2026, 11, 22, 12)) == utc(2026, 11, 16, 9)  # a Sunday now


def test_the_digest_follows_local_time_across_dst_changes() -> None:
    daily = trigger("0 8 * * *", "Europe/Berlin")
    # DST starts on 29 March 2026 (CET+1 -> CEST+2), ends on 25 October 2026.
    assert latest_fire(daily, utc(2026, 3, 28, 12)) == utc(2026, 3, 28, 7)
    assert latest_fire(daily, utc(2026, 3, 29, 12)) == utc(2026, 3, 29, 6)
    assert latest_fire(daily, utc(2026, 10, 24, 12)) == utc(2026, 10, 24, 6)
    assert latest_fire(daily, utc(2026, 10, 25, 12)) == utc(2026, 10, 25, 7)
    # The day DST starts is 23 hours long, the day it ends 25: the window is the local day.
    assert previous_fire(daily, utc(2026, 3, 29, 6)) == utc(2026, 3, 29, 6) - timedelta(hours=23)
    assert previous_fire(daily, utc(2026, 10, 25, 7)) == utc(2026, 10, 25, 7) - timedelta(hours=25)


def test_a_repeated_wall_clock_time_fires_once_and_a_skipped_one_still_fires() -> None:
    # 02:30 happens twice on 25 October 2026 in Berlin (at 00:30 and 01:30 UTC).
    repeated = trigger("30 2 * * *", "Europe/Berlin")
    fires, at = [], utc(2026, 10, 24, 12)
    for _ in range(3):
        at = next_fire(repeated, at)
        fires.append(at)
    assert fires == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30), utc(2026, 10, 27, 1, 30)]
    assert latest_fire(repeated, utc(2026, 10, 25, 12)) == utc(2026, 10, 25, 0, 30)
    # 02:30 does not happen on 29 March 2026; it fires an hour later by the clock, once.
    skipped = trigger("30 2 * * *", "Europe/Berlin")
    assert next_fire(skipped, utc(2026, 3, 28, 12)) == utc(2026, 3, 29, 1, 30)
    assert next_fire(skipped, utc(2026, 3, 29, 1, 30)) == utc(2026, 3, 30, 0, 30)


@pytest.mark.parametrize(
    ("cron", "zone", "says"),
    [
        ("61 * * * *", "UTC", "bad cron expression '61 * * * *'"),
        ("every day", "UTC", "five fields"),
        ("0 8 * * *", "Mars/Olympus", "unknown timezone 'Mars/Olympus'"),
    ],
)
def test_bad_crons_and_zones_say_what_is_wrong(cron: str, zone: str, says: str) -> None:
    with pytest.raises(CronError, match=says.replace("*", r"\*")):
        trigger(cron, zone)


@pytest.mark.parametrize(
    ("weekdays", "fires_on"),
    [
        ("1", ["Mon"]),
        ("0", ["Sun"]),
        ("7", ["Sun"]),
        ("1-5", ["Mon", "Tue", "Wed", "Thu", "Fri"]),
        ("5-7", ["Sun", "Fri", "Sat"]),
        ("sat,sun", ["Sun", "Sat"]),
        ("*/2", ["Sun", "Tue", "Thu", "Sat"]),
        ("MON-wed", ["Mon", "Tue", "Wed"]),
    ],
)
def test_weekdays_count_as_crontab_counts_them(weekdays: str, fires_on: list[str]) -> None:
    cron = trigger(f"0 9 * * {weekdays}", "UTC")
    at, days = utc(2026, 11, 21, 12), []  # a Saturday; the next week is Sun 22 .. Sat 28
    while (at := next_fire(cron, at)) <= utc(2026, 11, 28, 23):
        days.append(f"{at:%a}")
    assert days == fires_on


def test_a_day_of_month_and_a_weekday_both_fire_as_in_crontab() -> None:
    """ "0 9 1 * 1": on the 1st and on every Monday, not only on Mondays that are the 1st."""
    cron = trigger("0 9 1 * 1", "Europe/Berlin")
    fires, at = [], datetime(2026, 11, 22, tzinfo=UTC)  # a Sunday
    for _ in range(4):
        at = next_fire(cron, at)  # type: ignore[assignment]
        fires.append(at.astimezone(BERLIN).strftime("%a %d %b %H:%M"))
    assert fires == ["Mon 23 Nov 09:00", "Mon 30 Nov 09:00", "Tue 01 Dec 09:00", "Mon 07 Dec 09:00"]


def test_a_cron_that_never_fires_is_refused() -> None:
    with pytest.raises(CronError, match="never fires"):
        trigger("0 0 31 2 *", "UTC")
    assert next_fire(trigger("0 0 29 2 *", "UTC"), datetime(2026, 3, 1, tzinfo=UTC)) == datetime(
        2028, 2, 29, tzinfo=UTC
    )
