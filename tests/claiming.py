"""A worker's claim for tests that run beside a notifier.

On PostgreSQL a claim skips a task whose row another transaction holds (the notifier saving
the card it just posted or edited), and a real worker simply takes it on its next look. A
test that claims once and assumes it got the task fails at random; this one looks again."""

from __future__ import annotations

from sqlalchemy import Engine

from storage.db import transaction
from storage.lifecycle import State
from storage.models import Task
from storage.queue import claim_next
from storage.tasks import transition
from tests.waiting import wait_for


def claim(engine: Engine, worker: str = "w1", *, running: bool = False) -> Task:
    """The next queued task, claimed by `worker` (and moved on to running with `running`)."""

    def once() -> Task | None:
        with transaction(engine) as session:
            return claim_next(session, worker)

    task = wait_for(once, 10, "a queued task to claim")
    assert task.id is not None
    if running:
        with transaction(engine) as session:
            transition(session, task.id, State.RUNNING, actor=worker)
    return task
