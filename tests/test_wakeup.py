"""Idle workers wake when a task is queued (PostgreSQL LISTEN/NOTIFY, a FIFO beside a SQLite
file) instead of waiting for their next poll, and a wake that never comes costs one poll
interval, not the task."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, insert

from executor.runner.worker import Worker
from storage import wakeup
from storage.db import make_engine
from storage.lifecycle import State
from storage.models import Task, utcnow
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.worker_fixtures import RunWorker, add_task, task, wait_for

FINISH = reply(tool_call("finish", {"summary": "done"}))


@contextmanager
def idle_worker(engine: Engine, worker: Worker, poll_s: float) -> Iterator[wakeup.Bell]:
    """`worker` running in a thread with the executor's wake-up listener, idle (waiting on
    its bell) when the block starts."""
    stop = worker.stop
    with wakeup.listen(engine, stop) as bell:
        worker.bell, worker.idle_poll_s = bell, poll_s
        thread = threading.Thread(target=worker.work)
        thread.start()
        try:
            wait_for(lambda: bell.waiters == 1, timeout=30, message="the worker to go idle")
            yield bell
        finally:
            stop.set()
            thread.join(60)


def test_a_task_queued_for_an_idle_worker_is_claimed_long_before_its_poll(
    engine: Engine, make_worker: RunWorker
) -> None:
    with ScriptedLLM([FINISH]) as llm:
        worker = make_worker(llm)
        with idle_worker(engine, worker, poll_s=600) as bell:
            rung = bell.rung
            task_id = add_task(engine)  # another transaction, as `nightcrew add` or the bot
            wait_for(lambda: bell.rung > rung, timeout=10, message="the wake-up")
            wait_for(
                lambda: task(engine, task_id).state is not State.QUEUED,
                timeout=20,
                message="the claim, which a 10-minute poll would not have made yet",
            )
            wait_for(lambda: llm.requests, timeout=60, message="the agent's first request")


def test_a_missed_wake_is_made_up_by_the_poll(engine: Engine, make_worker: RunWorker) -> None:
    with ScriptedLLM([FINISH]) as llm:
        worker = make_worker(llm)
        with idle_worker(engine, worker, poll_s=1.0) as bell:
            rung = bell.rung
            # A writer that announces nothing (plain SQL, an older release): no wake comes.
            now = utcnow()
            with engine.begin() as conn:
                task_id = conn.execute(
                    insert(Task)
                    .values(
                        repo="app",
                        prompt="fix add() in calc.py",
                        requester="U1",
                        branch="nightcrew/plain-sql",
                        state=State.QUEUED,
                        created_at=now,
                        updated_at=now,
                    )
                    .returning(Task.id)
                ).scalar_one()
            wait_for(
                lambda: task(engine, task_id).state is not State.QUEUED,
                timeout=30,
                message="the poll to find the task",
            )
            assert bell.rung == rung  # found by polling: nothing rang


def test_the_wake_folder_writes_into_fifos_only(tmp_path: Path) -> None:
    """Whoever plants a link or a file among the FIFOs gets no byte written through it."""
    engine = make_engine(f"sqlite:///{tmp_path / 'nightcrew.db'}")
    folder = wakeup.wake_folder(engine.url.database)
    assert folder is not None
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    stop = threading.Event()
    with wakeup.listen(engine, stop) as bell:
        (folder / "planted.fifo").symlink_to(victim)
        (folder / "plain.fifo").write_text("")
        rung = bell.rung
        add_task(engine)
        wait_for(lambda: bell.rung > rung, timeout=10, message="the executor's own FIFO rung")
    assert victim.read_text() == "keep me" and (folder / "plain.fifo").read_text() == ""
    engine.dispose()
