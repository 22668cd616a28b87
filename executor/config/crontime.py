"""Cron arithmetic in a time zone, pure: the fire times of a cron expression around a given
instant. Everything runs off an instant passed in (never the wall clock), so restarts, missed
runs and DST changes are tested with a frozen clock.

A wall-clock time that happens twice (the hour repeated when DST ends) fires once, at its
first occurrence, as in Vixie cron; one that does not happen (the hour skipped when DST
starts) fires at the same offset after the change (APScheduler's rule: 02:30 becomes 03:30)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

# Shorthands people know from crontab(5); APScheduler's from_crontab takes five fields only.
ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
# How far back to look for the latest fire time when nothing bounds it (a yearly cron).
MAX_LOOKBACK = timedelta(days=370)
_TICK = timedelta(microseconds=1)
# A cron with no fire time after this instant has none at all (no cron has an end date).
NEVER_AFTER = datetime(2000, 1, 1, tzinfo=UTC)


class CronError(ValueError):
    """A cron expression or time zone we cannot use; the message says which and why."""


def trigger(cron: str, timezone: str) -> BaseTrigger:
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"unknown timezone {timezone!r} (use a name like Europe/Berlin)") from None
    fields = ALIASES.get(cron.strip().lower(), cron).split()
    try:
        if len(fields) != 5:
            raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
        minute, hour, day, month, weekday = fields
        days = {"day": day, "day_of_week": _weekdays(weekday)}
        if day != "*" and weekday != "*":
            # crontab(5): with both restricted, either matching day fires ("0 9 1 * 1" = the
            # 1st and every Monday); APScheduler alone would want both at once.
            built: BaseTrigger = OrTrigger(
                [
                    CronTrigger(minute=minute, hour=hour, day=day, month=month, timezone=tz),
                    CronTrigger(
                        minute=minute,
                        hour=hour,
                        month=month,
                        day_of_week=days["day_of_week"],
                        timezone=tz,
                    ),
                ]
            )
        else:
            built = CronTrigger(minute=minute, hour=hour, month=month, timezone=tz, **days)
    except ValueError as exc:
        raise CronError(
            f"bad cron expression {cron!r}: {exc} (five fields: minute hour day month weekday, "
            'like "0 9 * * 1" for Mondays at 9:00)'
        ) from None
    if built.get_next_fire_time(None, NEVER_AFTER) is None:
        raise CronError(f"cron expression {cron!r} never fires (like the 31st of February)")
    return built


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _weekdays(field: str) -> str:
    """crontab's weekday field (0 or 7 = Sunday, 1 = Monday, names, ranges, steps) as names
    for APScheduler 3, whose numbers start at Monday = 0 (its own `from_crontab` passes the
    numbers through, so "1" would mean Tuesday)."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise ValueError(f"bad step in weekday {part!r}")
        if base == "*":
            first, last = 0, 6
        else:
            low, _, high = base.partition("-")
            first = _day(low)
            last = _day(high) if high else (6 if step else first)
            if high and last == 0 and first > 0:
                last = 7  # 5-0 or 5-7: Friday to Sunday
        if last < first:
            raise ValueError(f"weekday range {part!r} runs backwards")
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return ",".join(_DAYS[d] for d in sorted(days))


def _day(text: str) -> int:
    if text[:3] in _DAYS:
        return _DAYS.index(text[:3])
    if text.isdigit() and int(text) <= 7:
        return int(text)
    raise ValueError(f"weekday {text!r} is not 0-7 or a name like mon")


def _repeated(fire: datetime) -> bool:
    """True for the second occurrence of a wall-clock time repeated when DST ends."""
    first = fire.replace(tzinfo=None).replace(tzinfo=fire.tzinfo, fold=0)
    return first.utcoffset() != fire.utcoffset()


def next_fire(cron: BaseTrigger, after: datetime) -> datetime | None:
    """The first fire time strictly after `after`, in UTC."""
    # Arithmetic in UTC: on a local time, + 1 µs is wall-clock arithmetic and drops `fold`,
    # which would step back from the repeated 02:30 to the first one.
    fire = cron.get_next_fire_time(None, after.astimezone(UTC) + _TICK)
    while fire is not None and _repeated(fire):
        fire = cron.get_next_fire_time(None, fire.astimezone(UTC) + _TICK)
    return fire.astimezone(UTC) if fire is not None else None


def latest_fire(
    cron: BaseTrigger, now: datetime, *, after: datetime | None = None
) -> datetime | None:
    """The latest fire time `t` with `after < t <= now` (UTC), or None. Searches backwards in
    doubling windows, so a per-minute cron costs a few steps and a yearly one a few dozen."""
    floor = after if after is not None else now - MAX_LOOKBACK
    span = timedelta(minutes=2)
    while True:
        start = max(now - span, floor)
        found, fire = None, next_fire(cron, start)
        while fire is not None and fire <= now:
            found, fire = fire, next_fire(cron, fire)
        if found is not None or start == floor:
            return found
        span *= 2


def previous_fire(cron: BaseTrigger, fire: datetime) -> datetime | None:
    """The fire time before `fire` (within a year), or None."""
    return latest_fire(cron, fire - _TICK)
