"""`show` counts the agent's working time apart from the wait for a person (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.terminal.render import time_split
from storage.models import TaskEvent

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def moved(minutes: float, to: str) -> TaskEvent:
    return TaskEvent(
        task_id=1, kind="state", payload={"to": to}, created_at=T0 + timedelta(minutes=minutes)
    )


def test_the_wait_for_approval_is_not_working_time() -> None:
    story = [
        TaskEvent(task_id=1, kind="created", payload={}, created_at=T0),
        moved(10, "preparing"),  # ten minutes queued: neither
        moved(11, "running"),
        moved(14, "checking"),
        moved(15, "awaiting_approval"),  # five minutes of work so far
        moved(15 + 8 * 60, "merging"),  # approved the next morning
        moved(15 + 8 * 60 + 1, "merged"),
    ]
    now = T0 + timedelta(days=3)
    assert time_split(story, now) == {
        "working_s": 6 * 60.0,
        "awaiting_approval_s": 8 * 3600.0,
        "needs_input_s": 0.0,
    }


def test_a_task_still_waiting_counts_up_to_now() -> None:
    story = [moved(0, "preparing"), moved(2, "running"), moved(3, "needs_input")]
    split = time_split(story, T0 + timedelta(minutes=13))
    assert (split["working_s"], split["needs_input_s"]) == (180.0, 600.0)
