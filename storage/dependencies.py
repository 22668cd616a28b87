"""Dependencies between tasks: a task that waits for others to merge first.

A task with prerequisites is `waiting` until every prerequisite is `merged`; then `settle`
queues it (the worker calls it in its claim transaction), so it starts from a base branch
that holds their merges. A prerequisite that failed, was rejected or cancelled parks its
dependents in `needs_input` with the reason; `drop_prerequisites` ("run anyway") lets them
go. Nothing here is a second source of truth: the claim (storage/queue.py) re-checks the
prerequisites itself (`unmerged_prerequisite`, and `exclusive_running` for a plan's tasks that
share paths), so a crash between any two steps cannot start a task early or twice."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from functools import cache

from sqlalchemy import ColumnElement, Select, and_, delete, exists, insert, select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from storage.defaults import MAX_PREREQUISITES
from storage.errors import Conflict, StorageError
from storage.lifecycle import WORKING, IllegalTransition, State
from storage.models import Task, TaskDependency, TaskExclusion
from storage.plan_draft import find_cycle
from storage.tasks import record, transition

# A prerequisite in one of these will not merge unless a person acts: its dependents park.
DEAD: frozenset[State] = frozenset({State.FAILED, State.CANCELLED, State.REJECTED})

_Prereq = aliased(Task, name="prereq")
# In a parked dependent's reason; front ends offer the "Run anyway" choice on seeing it.
RUN_ANYWAY_HINT = "run it anyway"


class BadDependency(StorageError):
    """`--after` named something a task cannot wait for; nothing was written."""


# The claim's conditions are built once (`cache`): every idle worker asks for them on every
# look at the queue, and composing them (an aliased correlated subquery) cost more CPU than
# the database spent running them.
@cache
def unmerged_prerequisite() -> ColumnElement[bool]:
    """True for a task (the `task` table in the enclosing query) with a prerequisite that is
    not merged yet: the claim's and settle's one definition of "must still wait"."""
    return exists(
        select(1)
        .select_from(TaskDependency)
        .join(_Prereq, col(_Prereq.id) == col(TaskDependency.prerequisite_id))
        .where(col(TaskDependency.task_id) == col(Task.id), col(_Prereq.state) != State.MERGED)
    )


@cache
def _dead_prerequisite() -> ColumnElement[bool]:
    return exists(
        select(1)
        .select_from(TaskDependency)
        .join(_Prereq, col(_Prereq.id) == col(TaskDependency.prerequisite_id))
        .where(col(TaskDependency.task_id) == col(Task.id), col(_Prereq.state).in_(list(DEAD)))
    )


def prerequisites(session: Session, task_id: int) -> list[Task]:
    rows = session.execute(
        select(_Prereq)
        .join(TaskDependency, col(TaskDependency.prerequisite_id) == col(_Prereq.id))
        .where(col(TaskDependency.task_id) == task_id)
        .order_by(col(_Prereq.id))
    ).scalars()
    return list(rows)


def dependents(session: Session, task_id: int) -> list[int]:
    rows = session.execute(
        select(TaskDependency.task_id)
        .where(col(TaskDependency.prerequisite_id) == task_id)
        .order_by(col(TaskDependency.task_id))
    ).scalars()
    return list(rows)


def ids_text(ids: Collection[int]) -> str:
    """`#3, #7`: task ids as people write them."""
    return ", ".join(f"#{i}" for i in sorted(ids))


def add_prerequisites(session: Session, task: Task, after: Sequence[int]) -> Task:
    """Make the new `task` wait for `after` (ids of tasks of the same repo, not rejected or
    cancelled); refused with a clear message (BadDependency) when one cannot be waited for or
    would close a circle. Moves the task to `waiting` unless all are merged already."""
    assert task.id is not None
    wanted = sorted(set(after))
    if len(wanted) > MAX_PREREQUISITES:
        raise BadDependency(f"a task may wait for at most {MAX_PREREQUISITES} others")
    if task.id in wanted:
        raise BadDependency(f"task {task.id} cannot come after itself")
    found = {
        t.id: t for t in session.execute(select(Task).where(col(Task.id).in_(wanted))).scalars()
    }
    for pid in wanted:
        pre = found.get(pid)
        if pre is None:
            raise BadDependency(f"--after {pid}: there is no task {pid}")
        if pre.repo != task.repo:
            raise BadDependency(
                f"--after {pid}: task {pid} is on {pre.repo}, this one on {task.repo};"
                " merge order only means something within one repo"
            )
        if State(pre.state) in (State.REJECTED, State.CANCELLED):
            raise BadDependency(f"--after {pid}: task {pid} is {pre.state}; it will never merge")
    _refuse_cycle(session, task.id, wanted)
    if wanted:
        session.execute(
            insert(TaskDependency),
            [{"task_id": task.id, "prerequisite_id": pid} for pid in wanted],
        )
    record(session, task.id, "prerequisites", {"after": wanted})
    unmerged = [pid for pid in wanted if State(found[pid].state) is not State.MERGED]
    if unmerged:
        task = transition(
            session, task.id, State.WAITING, reason=f"waits for {ids_text(unmerged)} to merge"
        )
    return task


def _refuse_cycle(session: Session, task_id: int, wanted: list[int]) -> None:
    """Walk the prerequisites of `wanted` (in the database) looking for `task_id`."""
    graph: dict[int, list[int]] = {task_id: list(wanted)}
    todo = list(wanted)
    while todo:
        rows = session.execute(
            select(TaskDependency.task_id, TaskDependency.prerequisite_id).where(
                col(TaskDependency.task_id).in_(todo)
            )
        ).all()
        todo = []
        for tid, pid in rows:
            graph.setdefault(tid, []).append(pid)
            if pid not in graph:
                graph.setdefault(pid, [])
                todo.append(pid)
    cycle = find_cycle(graph)
    if cycle:
        raise BadDependency("that would make tasks wait for each other: " + " -> ".join(cycle))


def drop_prerequisites(session: Session, task_id: int) -> list[int]:
    """ "Run anyway": the task no longer waits for (nor merges after) anything."""
    dropped = list(
        session.execute(
            delete(TaskDependency)
            .where(col(TaskDependency.task_id) == task_id)
            .returning(col(TaskDependency.prerequisite_id))
        ).scalars()
    )
    if dropped:
        record(session, task_id, "prerequisites_dropped", {"after": sorted(dropped)})
    return dropped


def settle(session: Session) -> int:
    """Move tasks along their prerequisites; returns how many moved. Idempotent, and each
    move is a conditional transition: two executors settling at once move a task once.
    - waiting, every prerequisite merged -> queued (it starts from the base holding them);
    - waiting or unclaimed approved merge, a prerequisite failed/rejected/cancelled ->
      needs_input, saying which, and what the person can do;
    - queued (re-queued by a retry or a reply) with a prerequisite not merged -> waiting."""
    moved = 0
    ready, stuck, requeued = _settle_queries()
    for tid in list(session.execute(ready).scalars()):
        moved += _move(session, tid, State.QUEUED, "its prerequisites are merged", State.WAITING)
    for tid, state in list(session.execute(stuck).all()):
        dead = [p for p in prerequisites(session, tid) if State(p.state) in DEAD]
        why = "; ".join(f"prerequisite #{p.id} {p.state}" for p in dead)
        reason = f"{why}: {RUN_ANYWAY_HINT} on the current base, or cancel it"
        moved += _move(session, tid, State.NEEDS_INPUT, reason, State(state))
    for tid in list(session.execute(requeued).scalars()):
        pending = [p.id for p in prerequisites(session, tid) if p.state is not State.MERGED]
        reason = f"waits for {ids_text([p for p in pending if p is not None])} to merge"
        moved += _move(session, tid, State.WAITING, reason, State.QUEUED)
    return moved


@cache
def _settle_queries() -> tuple[Select[tuple[int]], Select[tuple[int, State]], Select[tuple[int]]]:
    """settle's three looks: waiting and ready; parked behind a dead prerequisite; queued
    but behind an unmerged one."""
    ready = select(col(Task.id)).where(
        col(Task.state) == State.WAITING, ~unmerged_prerequisite(), ~_dead_prerequisite()
    )
    stuck = select(col(Task.id), col(Task.state)).where(
        _dead_prerequisite(),
        (col(Task.state) == State.WAITING)
        | and_(col(Task.state) == State.MERGING, col(Task.worker_id).is_(None)),
    )
    requeued = select(col(Task.id)).where(col(Task.state) == State.QUEUED, unmerged_prerequisite())
    return ready, stuck, requeued


def _move(session: Session, task_id: int, to: State, reason: str, src: State) -> int:
    # Still as judged: in `src`, and (a merge) still unclaimed.
    where = [col(Task.state) == src, col(Task.worker_id).is_(None)]
    try:
        transition(session, task_id, to, reason=reason, actor="dependencies", where=where)
    except (Conflict, IllegalTransition):
        return 0  # another executor moved it first (perhaps on, where this move is illegal)
    return 1


@cache
def exclusive_running() -> ColumnElement[bool]:
    """True for a task (the `task` table in the enclosing query) that shares paths with a
    task of its plan that holds a worker now: it must not start beside it."""
    other = aliased(Task, name="other")
    return exists(
        select(1)
        .select_from(TaskExclusion)
        .join(other, col(other.id) == col(TaskExclusion.other_id))
        .where(col(TaskExclusion.task_id) == col(Task.id), col(other.state).in_(list(WORKING)))
    )
