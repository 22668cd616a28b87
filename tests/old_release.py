"""Run as its own process with the storage package of a release before migrations on
PYTHONPATH (tests/test_migrations.py extracts it from git): that release's `create_all`
makes the database and its code fills it with tasks in many states, events, nudges and
outbox rows. Prints every row as JSON, for the test to compare after the upgrade.

Only that release's API is used here (create_task, claim_next, transition, add_nudge,
take_nudges, outbox), so this file keeps working as the current code moves on."""

from __future__ import annotations

import json
import sys
from typing import Any

from sqlalchemy import Connection, Engine, text

TABLES = ("task", "taskevent", "nudge", "outbox")


def dump(conn: Connection, columns: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Every row of the old tables, oldest first; only `columns` when given."""
    out: dict[str, Any] = {}
    for table in TABLES:
        cols = ", ".join(columns[table]) if columns else "*"
        rows = conn.execute(text(f"SELECT {cols} FROM {table} ORDER BY id")).mappings().all()
        out[table] = json.loads(json.dumps([dict(r) for r in rows], default=str))
    return out


def fill(engine: Engine) -> None:
    from storage.db import transaction
    from storage.lifecycle import State
    from storage.models import Task
    from storage.outbox import card_posted, claim_due, retry_later
    from storage.queue import claim_next
    from storage.tasks import add_nudge, create_task, take_nudges, transition

    def add(prompt: str, **kw: Any) -> int:
        with transaction(engine) as s:
            task = create_task(s, repo="app", prompt=prompt, requester="U1", **kw)
            assert task.id is not None
            return task.id

    def claim() -> int:
        with transaction(engine) as s:
            task = claim_next(s, "old-exec/0")
            assert task is not None and task.id is not None
            return task.id

    def move(task_id: int, *states: State, **fields: Any) -> None:
        for state in states:
            with transaction(engine) as s:
                transition(s, task_id, state, reason=f"to {state.value}", actor="old", **fields)

    # Claimed in id order: each claim takes the task just added.
    merged = add("a merged one, with a slack thread", channel="C1", thread_ts="111.1")
    claim()
    move(merged, State.RUNNING, State.CHECKING, State.REVIEWING, State.AWAITING_APPROVAL)
    move(merged, State.MERGING, approved_by="U1")
    move(merged, State.MERGED, merge_commit="c" * 40, head_commit="d" * 40)
    with transaction(engine) as s:  # what its agent used, as that release counted it
        task = s.get(Task, merged)
        task.tokens_in, task.tokens_out, task.cost_usd = 1000, 200, 0.0123
        if hasattr(task, "cost_nanos"):  # a release that counted exactly already
            task.cost_nanos = 12_300_000
        s.add(task)
    failed = add("fails: \u00e9t\u00e9 \U0001f680 unicode survives", channel="C1")
    claim()
    move(failed, State.RUNNING, State.FAILED)
    waiting = add("asks a question")
    claim()
    move(waiting, State.RUNNING, State.NEEDS_INPUT)
    with transaction(engine) as s:
        add_nudge(s, waiting, text="use the other API", author="U2", source="slack", slack_ts="2.2")
    running = add("still running when the old release stopped", channel="C2")
    claim()
    move(running, State.RUNNING)
    with transaction(engine) as s:
        add_nudge(s, running, text="hurry", author="U1")
        take_nudges(s, running)
    cancelled = add("cancelled while queued")
    move(cancelled, State.CANCELLED)
    add("queued, high priority", priority=0, channel="C1")
    add("queued, low priority", priority=2)
    with transaction(engine) as s:  # the notifier got some of it out
        rows = claim_due(s, lease_s=30, limit=3)
        card_posted(s, rows[0].id, rows[0].task_id, "999.9")
        retry_later(s, rows[1].id, error="ratelimited", at=rows[1].created_at)


def main(url: str) -> None:
    import storage
    from storage.db import make_engine

    assert "old-release" in storage.__file__, storage.__file__  # not today's package
    engine = make_engine(url)  # that release's create_all
    fill(engine)
    with engine.connect() as conn:
        print(json.dumps(dump(conn)))
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1])
