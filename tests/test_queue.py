"""The queue: claim order, exactly-once claims across processes, heartbeat, the reaper."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import select

from storage.db import transaction
from storage.lifecycle import State
from storage.models import Priority, Task, utcnow
from storage.queue import claim_next, heartbeat, reap_stale
from storage.tasks import create_task, events, get_task, record, transition
from tests.waiting import wait_for

LATER = timedelta(seconds=31)  # just past the default heartbeat timeout


def add(engine: Engine, n: int = 1, priority: Priority = Priority.NORMAL) -> list[int]:
    with transaction(engine) as s:
        tasks = [
            create_task(s, repo="app", prompt=f"task {i}", requester="U1", priority=priority)
            for i in range(n)
        ]
    return [t.id for t in tasks if t.id is not None]


def claim(engine: Engine, worker: str = "w1") -> Task | None:
    with transaction(engine) as s:
        return claim_next(s, worker)


def test_claim_takes_highest_priority_then_oldest(engine: Engine) -> None:
    low = add(engine, 1, Priority.LOW)
    normal = add(engine, 2)
    high = add(engine, 1, Priority.HIGH)
    order = [claim(engine) for _ in range(4)]
    assert [t.id for t in order if t] == high + normal + low
    assert claim(engine) is None


def test_claim_marks_the_task_as_the_workers(engine: Engine) -> None:
    [task_id] = add(engine)
    task = claim(engine, "w7")
    assert task is not None and task.id == task_id
    assert task.state is State.PREPARING
    assert (task.worker_id, task.attempts) == ("w7", 1)
    assert task.heartbeat_at is not None and task.started_at is not None
    with transaction(engine) as s:
        assert events(s, task_id)[-1].payload == {
            "from": "queued",
            "to": "preparing",
            "by": "w7",
            "attempt": 1,
        }


def test_a_task_is_claimed_while_another_connection_writes_its_log(engine: Engine) -> None:
    """The notifier (another connection) recording an event of a queued task must not hide
    the task from an idle worker's claim: on PostgreSQL the event's foreign key locks the
    task's row (KEY SHARE), which a claim by FOR UPDATE SKIP LOCKED would skip, leaving the
    task to the next poll."""
    [task_id] = add(engine)
    if engine.dialect.name == "sqlite":  # one writer at a time: nothing to pass
        assert claim(engine) is not None
        return
    with transaction(engine) as notifier:
        record(notifier, task_id, "card_updated", {})
        notifier.flush()  # the row lock is held until this transaction ends
        task = claim(engine)
    assert task is not None and task.id == task_id


def test_only_queued_tasks_are_claimed(engine: Engine) -> None:
    [a, b] = add(engine, 2)
    with transaction(engine) as s:
        transition(s, a, State.CANCELLED)
    task = claim(engine)
    assert task is not None and task.id == b


def _run_claimers(db_url: str, workers: list[str]) -> dict[str, list[int]]:
    script = Path(__file__).with_name("claimer.py")
    with tempfile.TemporaryDirectory() as barrier:
        procs = {
            w: subprocess.Popen(
                [sys.executable, str(script), db_url, w, barrier, str(len(workers))],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).parent.parent,
            )
            for w in workers
        }
        results = {}
        for w, proc in procs.items():
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
            results[w] = json.loads(out)
    return results


def test_two_processes_claim_each_of_200_tasks_exactly_once(engine: Engine, db_url: str) -> None:
    ids = add(engine, 200)
    results = _run_claimers(db_url, ["alpha", "beta"])
    claimed = results["alpha"] + results["beta"]
    assert sorted(claimed) == sorted(ids)  # every task once: no loss, no duplicate
    assert results["alpha"] and results["beta"], "both claimers should have won some tasks"
    with transaction(engine) as s:
        tasks = s.exec(select(Task)).all()
    owner = {t.id: t.worker_id for t in tasks}
    assert all(owner[i] == "alpha" for i in results["alpha"])
    assert all(owner[i] == "beta" for i in results["beta"])
    assert {(t.state, t.attempts) for t in tasks} == {(State.PREPARING, 1)}


def test_heartbeat_refreshes_only_the_owners_claim(engine: Engine) -> None:
    add(engine)
    task = claim(engine, "w1")
    assert task is not None and task.id is not None and task.heartbeat_at is not None
    first_beat = task.heartbeat_at
    wait_for(lambda: utcnow() > first_beat, 5, "the clock to move past the first beat")
    with transaction(engine) as s:
        beat = heartbeat(s, task.id, "w1")
        assert beat is not None and beat.heartbeat_at is not None
        assert beat.heartbeat_at > first_beat
        assert heartbeat(s, task.id, "intruder") is None


def test_a_silent_worker_loses_its_task_then_it_fails_after_max_attempts(engine: Engine) -> None:
    [task_id] = add(engine)
    for attempt in (1, 2, 3):
        task = claim(engine, f"w{attempt}")
        assert task is not None and task.id == task_id and task.attempts == attempt
        with transaction(engine) as s:  # fresh heartbeat: the reaper leaves it alone
            assert reap_stale(s, max_attempts=3) == []
        with transaction(engine) as s:
            reaped = reap_stale(s, max_attempts=3, now=utcnow() + LATER)
        assert [(r.task_id, r.worker_id) for r in reaped] == [(task_id, f"w{attempt}")]
        with transaction(engine) as s:
            task = get_task(s, task_id)
            assert task.worker_id is None
            if attempt < 3:
                assert task.state is State.QUEUED
                assert f"re-queued after attempt {attempt} of 3" in (task.reason or "")
            else:
                assert task.state is State.FAILED
                assert "stopped heartbeating on attempt 3 of 3; giving up" in (task.error or "")
    assert claim(engine) is None
    with transaction(engine) as s:  # the dead worker cannot heartbeat its way back
        assert heartbeat(s, task_id, "w3") is None


def test_the_reaper_honours_a_cancel_request(engine: Engine) -> None:
    [task_id] = add(engine)
    claim(engine)
    with transaction(engine) as s:
        task = get_task(s, task_id)
        task.cancel_requested_at = utcnow()
        s.add(task)
    with transaction(engine) as s:
        reap_stale(s, now=utcnow() + LATER)
    with transaction(engine) as s:
        assert get_task(s, task_id).state is State.CANCELLED


def test_a_stale_merge_is_released_not_requeued(engine: Engine) -> None:
    [task_id] = add(engine)
    claim(engine)
    with transaction(engine) as s:
        for state in (State.RUNNING, State.AWAITING_APPROVAL, State.MERGING):
            transition(s, task_id, state)
        task = get_task(s, task_id)
        task.worker_id, task.heartbeat_at = "merger", utcnow()
        s.add(task)
    with transaction(engine) as s:
        [reaped] = reap_stale(s, now=utcnow() + LATER)
    assert reaped.outcome is State.MERGING
    with transaction(engine) as s:
        task = get_task(s, task_id)
        assert (task.state, task.worker_id) == (State.MERGING, None)
