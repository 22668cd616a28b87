"""Every legal and every illegal transition, in the pure table and through the database."""

from __future__ import annotations

from itertools import pairwise, product

import pytest
from sqlalchemy import Engine, func
from sqlmodel import select

from storage.db import transaction
from storage.errors import Conflict
from storage.lifecycle import (
    TRANSITIONS,
    WORKING,
    IllegalTransition,
    State,
    can_transition,
    check_transition,
)
from storage.models import Outbox, Task, TaskEvent
from storage.tasks import create_task, get_task, transition

ALL_PAIRS = list(product(State, State))
LEGAL = [(a, b) for a, b in ALL_PAIRS if b in TRANSITIONS[a]]
ILLEGAL = [(a, b) for a, b in ALL_PAIRS if b not in TRANSITIONS[a]]


def test_the_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(State)


def test_the_happy_path_of_the_design_is_legal() -> None:
    path = [
        "queued",
        "preparing",
        "running",
        "checking",
        "reviewing",
        "revising",
        "checking",
        "reviewing",
        "awaiting_approval",
        "merging",
        "merged",
    ]
    for src, dst in pairwise(path):
        check_transition(State(src), State(dst))


def test_merged_and_rejected_are_final_and_nothing_moves_to_itself() -> None:
    assert TRANSITIONS[State.MERGED] == TRANSITIONS[State.REJECTED] == frozenset()
    assert TRANSITIONS[State.CANCELLED] == {State.QUEUED}  # only a retry revives it
    assert all(not can_transition(s, s) for s in State)


@pytest.mark.parametrize(("src", "dst"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transition_raises(src: State, dst: State) -> None:
    with pytest.raises(IllegalTransition, match=f"{src.value} -> {dst.value}"):
        check_transition(src, dst)


def _task_in(engine: Engine, state: State, channel: str | None = "C1") -> int:
    with transaction(engine) as s:
        task = create_task(s, repo="app", prompt="do it", requester="U1", channel=channel)
        task.state = state
        if state in WORKING:
            task.worker_id = "w1"
        s.add(task)
        s.flush()
        assert task.id is not None
        return task.id


def _counts(engine: Engine) -> tuple[int, int]:
    with transaction(engine) as s:
        events = s.exec(select(func.count()).select_from(TaskEvent)).one()
        outbox = s.exec(select(func.count()).select_from(Outbox)).one()
        return events, outbox


@pytest.mark.parametrize(("src", "dst"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_legal_transition_writes_state_event_and_outbox(engine: Engine, src: State, dst: State):
    task_id = _task_in(engine, src)
    events_before, outbox_before = _counts(engine)
    with transaction(engine) as s:
        transition(s, task_id, dst, reason="because", actor="U1")
    with transaction(engine) as s:
        task = get_task(s, task_id)
        assert task.state is dst
        assert task.reason == "because"
        if dst not in WORKING:
            assert task.worker_id is None
        if dst is State.FAILED:
            assert task.error == "because"
    assert _counts(engine) == (events_before + 1, outbox_before + 1)


@pytest.mark.parametrize(("src", "dst"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transition_writes_nothing(engine: Engine, src: State, dst: State) -> None:
    task_id = _task_in(engine, src)
    before = _counts(engine)
    with pytest.raises(IllegalTransition), transaction(engine) as s:
        transition(s, task_id, dst)
    with transaction(engine) as s:
        assert get_task(s, task_id).state is src
    assert _counts(engine) == before


def test_a_racing_writer_loses_with_a_conflict_and_writes_nothing(engine: Engine) -> None:
    task_id = _task_in(engine, State.AWAITING_APPROVAL)
    before = _counts(engine)
    with pytest.raises(Conflict), transaction(engine) as s:
        transition(s, task_id, State.MERGING, where=[Task.worker_id == "someone-else"])
    assert _counts(engine) == before


def test_tasks_outside_slack_write_no_outbox_rows(engine: Engine) -> None:
    task_id = _task_in(engine, State.QUEUED, channel=None)
    with transaction(engine) as s:
        transition(s, task_id, State.CANCELLED)
    assert _counts(engine)[1] == 0
