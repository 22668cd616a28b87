"""Every legal and every illegal transition, in the pure table and through the database.

The expectation is written out here by hand, from the design (/work/shared/DESIGN.md's
states) and the intent stated in storage/lifecycle.py, as literal pairs: the test never reads
`TRANSITIONS` to decide what it expects, so a wrong move in the table and a wrong line here
disagree instead of confirming each other."""

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

# Every legal move, by hand. Side exits of the working states (preparing … revising):
# needs_input (a question, a limit), failed, cancelled, and queued (the reaper re-queues a
# task whose worker died). merging is worked on too, but never re-queued or cancelled.
LEGAL_MOVES: frozenset[tuple[str, str]] = frozenset(
    {
        # queued: claimed, cancelled before it started, or failed before it could start
        ("queued", "preparing"),
        ("queued", "cancelled"),
        ("queued", "failed"),
        # queued again by a reply that was deleted before a worker took it: back to waiting
        ("queued", "needs_input"),
        ("queued", "awaiting_approval"),
        ("preparing", "running"),
        ("preparing", "needs_input"),
        ("preparing", "failed"),
        ("preparing", "cancelled"),
        ("preparing", "queued"),
        ("running", "checking"),
        ("running", "reviewing"),  # a repo with no checks
        ("running", "awaiting_approval"),  # a repo with no checks and no review
        ("running", "needs_input"),
        ("running", "failed"),
        ("running", "cancelled"),
        ("running", "queued"),
        ("checking", "reviewing"),
        ("checking", "revising"),  # a check failed
        ("checking", "awaiting_approval"),  # review off
        ("checking", "needs_input"),
        ("checking", "failed"),
        ("checking", "cancelled"),
        ("checking", "queued"),
        ("reviewing", "revising"),  # changes requested by the review
        ("reviewing", "awaiting_approval"),
        ("reviewing", "needs_input"),
        ("reviewing", "failed"),
        ("reviewing", "cancelled"),
        ("reviewing", "queued"),
        ("revising", "checking"),
        ("revising", "reviewing"),  # no checks
        ("revising", "awaiting_approval"),  # neither checks nor review
        ("revising", "needs_input"),
        ("revising", "failed"),
        ("revising", "cancelled"),
        ("revising", "queued"),
        # needs_input: a reply or a retry re-queues it; or a person closes it
        ("needs_input", "queued"),
        ("needs_input", "cancelled"),
        ("needs_input", "rejected"),
        ("needs_input", "failed"),
        # awaiting_approval: approve, request changes, reject, cancel, merged on the forge
        ("awaiting_approval", "merging"),
        ("awaiting_approval", "queued"),
        ("awaiting_approval", "rejected"),
        ("awaiting_approval", "cancelled"),
        ("awaiting_approval", "merged"),  # its pull request merged on the forge by a person
        # merging: done, parked for a person (with the reason), or failed
        ("merging", "merged"),
        ("merging", "needs_input"),
        ("merging", "awaiting_approval"),
        ("merging", "failed"),
        # waiting (a dependency of a plan or `--after`): starts once its prerequisites merged,
        # parks when one failed, or is cancelled; a queued task can go back to waiting
        ("queued", "waiting"),
        ("waiting", "queued"),
        ("waiting", "needs_input"),
        ("waiting", "cancelled"),
        # retry
        ("failed", "queued"),
        ("cancelled", "queued"),
        # merged and rejected are final: nothing leaves them
    }
)
STATES = [
    "waiting",
    "queued",
    "preparing",
    "running",
    "checking",
    "reviewing",
    "revising",
    "needs_input",
    "awaiting_approval",
    "merging",
    "merged",
    "failed",
    "cancelled",
    "rejected",
]
WORKING_BY_HAND = {"preparing", "running", "checking", "reviewing", "revising", "merging"}


def legal(src: State, dst: State) -> bool:
    return (src.value, dst.value) in LEGAL_MOVES


def test_the_states_are_the_designs() -> None:
    assert sorted(s.value for s in State) == sorted(STATES)
    assert set(TRANSITIONS) == set(State)
    assert {s.value for s in WORKING} == WORKING_BY_HAND
    assert {a for a, _ in LEGAL_MOVES} | {b for _, b in LEGAL_MOVES} <= set(STATES)


def test_the_table_allows_exactly_the_moves_written_out_here() -> None:
    allowed = {(a.value, b.value) for a, b in product(State, State) if can_transition(a, b)}
    assert sorted(allowed - LEGAL_MOVES) == [], "allowed by the table, illegal by design"
    assert sorted(LEGAL_MOVES - allowed) == [], "legal by design, refused by the table"


def test_every_illegal_move_raises_and_names_both_states() -> None:
    for src, dst in product(State, State):
        if legal(src, dst):
            check_transition(src, dst)
            continue
        with pytest.raises(IllegalTransition, match=f"{src.value} -> {dst.value}"):
            check_transition(src, dst)


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


def test_every_move_through_the_database_writes_all_or_nothing(engine: Engine) -> None:
    """Each of the 169 (from, to) pairs on a task of its own: a legal one writes the state,
    its event and its outbox row; an illegal one raises and writes nothing."""
    wrong: list[str] = []
    for src, dst in product(State, State):
        task_id = _task_in(engine, src)
        events, outbox = _counts(engine)
        if legal(src, dst):
            with transaction(engine) as s:
                transition(s, task_id, dst, reason="because", actor="U1")
            with transaction(engine) as s:
                task = get_task(s, task_id)
            ok = task.state is dst and task.reason == "because"
            ok &= dst in WORKING or task.worker_id is None
            ok &= dst is not State.FAILED or task.error == "because"
            ok &= _counts(engine) == (events + 1, outbox + 1)
        else:
            with pytest.raises(IllegalTransition), transaction(engine) as s:
                transition(s, task_id, dst)
            with transaction(engine) as s:
                ok = get_task(s, task_id).state is src
            ok &= _counts(engine) == (events, outbox)
        if not ok:
            wrong.append(f"{src.value} -> {dst.value}")
    assert wrong == []


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
