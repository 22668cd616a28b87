"""The work queue on the task table: atomic claim, heartbeat, and the reaper that takes
tasks back from workers that stopped heartbeating."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, String, and_, bindparam, case, false, func, null, or_, update
from sqlmodel import Session, col, select

from storage.defaults import HEARTBEAT_TIMEOUT_S, MAX_ATTEMPTS
from storage.dependencies import exclusive_running, unmerged_prerequisite
from storage.errors import Conflict
from storage.lifecycle import WORKING, State, check_transition
from storage.models import Outbox, Plan, Task, utcnow
from storage.tasks import notify, record, transition
from storage.wakeup import announce


def claim_next(
    session: Session,
    worker_id: str,
    *,
    exclude_repos: Sequence[str] = (),
    hold_repos: Sequence[str] = (),
) -> Task | None:
    """Atomically take the next task for `worker_id`, or None: an approved merge waiting for
    a worker first (merges unblock other work), else the most urgent, oldest queued task.
    `exclude_repos` skips repos at their concurrency cap; `hold_repos` keeps those repos'
    queued tasks waiting (a budget) but lets their approved merges through.

    Dependencies (storage/plans.py): a task starts, and an approved merge goes ahead, only
    once every prerequisite is merged (approving a dependent early queues its merge); a plan's
    task never starts beside a task of its plan that shares its paths and holds a worker.

    One statement: on SQLite the write lock (BEGIN IMMEDIATE) serialises claimers; on
    PostgreSQL `FOR NO KEY UPDATE SKIP LOCKED` lets claimers pass each other's locked rows, and a
    plan's claims take turns on the plan's row (`_plan_turn`)."""
    check_transition(State.QUEUED, State.PREPARING)
    stmt = _claim_statement(tuple(exclude_repos), tuple(hold_repos))
    params = {"worker": worker_id, "now": utcnow()}
    if session.get_bind().dialect.name == "postgresql":
        task = _claim_in_turn(session, stmt, params)
    else:
        options = {"populate_existing": True}
        task = session.execute(stmt, params, execution_options=options).scalar()
    if task is None:
        return None
    assert task.id is not None
    if task.state is State.MERGING:
        record(session, task.id, "merge_claimed", {"by": worker_id, "attempt": task.attempts})
        return task
    payload = {"from": "queued", "to": "preparing", "by": worker_id, "attempt": task.attempts}
    record(session, task.id, "state", payload)
    notify(session, task, "state", payload)
    if task.plan_id is not None and task.channel:  # the plan's card shows it started
        session.add(Outbox(kind="plan", payload={"plan_id": task.plan_id}))
    return task


@lru_cache(maxsize=64)
def _claim_statement(exclude_repos: tuple[str, ...], hold_repos: tuple[str, ...]) -> Any:
    """The claim's one statement, built once per (capped, held) repos: every idle worker
    runs it on every look at the queue, and composing it cost more CPU than running it.
    Parameters: `worker`, `now`."""
    worker = bindparam("worker", type_=String())
    now = bindparam("now", type_=Task.__table__.c.updated_at.type)  # type: ignore[attr-defined]
    waiting_merge = and_(
        col(Task.state) == State.MERGING, col(Task.worker_id).is_(None), ~unmerged_prerequisite()
    )
    startable = and_(
        col(Task.state) == State.QUEUED,
        col(Task.repo).not_in(list(hold_repos)),
        ~unmerged_prerequisite(),
        ~exclusive_running(),
    )
    claimable = or_(startable, waiting_merge)
    pick = (
        select(Task.id)
        .where(claimable, col(Task.repo).not_in(list(exclude_repos)))
        .order_by(case((waiting_merge, 0), else_=1), col(Task.priority), col(Task.id))
        .limit(1)
        # NO KEY UPDATE: a row only key-share locked (another connection writing the task's
        # events or outbox rows, whose foreign keys lock it so) is taken, not skipped.
        .with_for_update(skip_locked=True, key_share=True)
        .scalar_subquery()
    )
    stmt = (
        update(Task)
        .where(col(Task.id) == pick, claimable)
        .values(
            state=case((col(Task.state) == State.QUEUED, State.PREPARING), else_=col(Task.state)),
            worker_id=worker,
            executor=worker,
            heartbeat_at=now,
            attempts=col(Task.attempts) + 1,
            started_at=func.coalesce(col(Task.started_at), now),
            updated_at=now,
            reason=case((col(Task.state) == State.QUEUED, null()), else_=col(Task.reason)),
        )
        .returning(Task)
    )
    return stmt


def _claim_in_turn(
    session: Session, stmt: Any, params: dict[str, Any], tries: int = 3
) -> Task | None:
    """PostgreSQL: the claim in a savepoint, undone if a task of its plan that shares its
    paths started meanwhile (`_plan_turn`); then the next pick no longer offers that one."""
    for _ in range(tries):
        turn = session.begin_nested()
        options = {"populate_existing": True}
        task = session.execute(stmt, params, execution_options=options).scalar()
        if task is None or _plan_turn(session, task):
            turn.commit()
            return task
        turn.rollback()
    return None


def _plan_turn(session: Session, task: Task) -> bool:
    """PostgreSQL: claimers of one plan's tasks take turns on the plan's row, then look again
    (a new statement sees what the claimer before them committed), so two tasks that share
    paths cannot both start because each read the other as queued. Plain tasks skip this."""
    if task.plan_id is None or task.state is State.MERGING:
        return True
    session.execute(select(Plan.id).where(col(Plan.id) == task.plan_id).with_for_update())
    clash = select(Task.id).where(col(Task.id) == task.id, exclusive_running())
    return session.execute(clash).first() is None


def show_waiting(session: Session, reasons: Mapping[str, str], *, marker: str) -> int:
    """Say on each queued task of a repo in `reasons` why it waits (its `reason`, an event
    and a card refresh, once: only where the reason changes), and clear reasons starting
    with `marker` where the repo no longer waits. Returns how many tasks changed."""
    queued = select(Task).where(col(Task.state) == State.QUEUED)
    differs = [
        and_(
            col(Task.repo) == repo,
            or_(col(Task.reason).is_(None), col(Task.reason) != reason),
        )
        for repo, reason in reasons.items()
    ]
    # Only rows whose reason changes come back: a poll with nothing new reads no task.
    stale = session.exec(queued.where(or_(false(), *differs))).all()
    freed = session.exec(
        queued.where(
            col(Task.reason).startswith(marker, autoescape=True),
            col(Task.repo).not_in(list(reasons)),
        )
    ).all()
    changed = 0
    for task, reason in [*((t, reasons[t.repo]) for t in stale), *((t, None) for t in freed)]:
        assert task.id is not None
        # Still as read: another executor polling at the same time changes it only once.
        as_read = col(Task.reason).is_(None) if task.reason is None else Task.reason == task.reason
        stmt = (
            update(Task)
            .where(col(Task.id) == task.id, col(Task.state) == State.QUEUED, as_read)
            .values(reason=reason)
            .returning(Task)
        )
        updated = session.execute(stmt, execution_options={"populate_existing": True}).scalar()
        if updated is None:
            continue  # claimed, cancelled or already told meanwhile
        record(session, task.id, "waiting" if reason else "waiting_over", {"reason": reason})
        notify(session, updated, "card", {})
        changed += 1
    return changed


def waiting_by_repo(session: Session, *, marker: str) -> dict[str, int]:
    """How many queued tasks per repo carry a waiting reason starting with `marker`."""
    rows = session.exec(
        select(Task.repo, func.count())
        .where(
            col(Task.state) == State.QUEUED,
            col(Task.reason).startswith(marker, autoescape=True),
        )
        .group_by(Task.repo)
    ).all()
    return dict(rows)


def heartbeat(session: Session, task_id: int, worker_id: str) -> Task | None:
    """Refresh the worker's hold on the task. None means the worker no longer owns it
    (reaped, or cancelled) and must stop working on it."""
    stmt = (
        update(Task)
        .where(
            col(Task.id) == task_id,
            col(Task.worker_id) == worker_id,
            col(Task.state).in_(list(WORKING)),
        )
        .values(heartbeat_at=utcnow())
        .returning(Task)
    )
    return session.execute(stmt, execution_options={"populate_existing": True}).scalar()


@dataclass(frozen=True)
class Reaped:
    task_id: int
    worker_id: str | None
    outcome: State  # where the task went: QUEUED, FAILED, CANCELLED; MERGING = released


def reap_stale(
    session: Session,
    *,
    timeout_s: float = HEARTBEAT_TIMEOUT_S,
    max_attempts: int = MAX_ATTEMPTS,
    now: datetime | None = None,
) -> list[Reaped]:
    """Take back every task whose worker has not heartbeated for `timeout_s`.

    Re-queued while attempts remain, else failed with the reason; a task whose cancel was
    requested is cancelled. A merge is released (not re-queued) so another worker finishes
    it: merging must be resumed, never restarted from scratch."""
    cutoff = (now or utcnow()) - timedelta(seconds=timeout_s)
    stale = session.exec(
        select(Task).where(col(Task.state).in_(list(WORKING)), col(Task.heartbeat_at) < cutoff)
    ).all()
    reaped: list[Reaped] = []
    for task in stale:
        assert task.id is not None
        task_id, worker = task.id, task.worker_id  # `task` is refreshed by the update below
        # Still the same claim we judged stale: a late heartbeat wins over the reaper.
        same_claim = [
            col(Task.worker_id) == task.worker_id,
            col(Task.heartbeat_at) == task.heartbeat_at,
        ]
        gone = f"worker {worker} stopped heartbeating"
        try:
            if task.state is State.MERGING and task.attempts >= max_attempts:
                reason = f"{gone} during the merge, attempt {task.attempts} of {max_attempts}"
                transition(
                    session,
                    task_id,
                    State.NEEDS_INPUT,
                    reason=reason,
                    actor="reaper",
                    where=same_claim,
                )
                reaped.append(Reaped(task_id, worker, State.NEEDS_INPUT))
                continue
            if task.state is State.MERGING:
                stale = [col(Task.heartbeat_at) == task.heartbeat_at]
                if worker and release(
                    session, task_id, worker, reason=gone, by="reaper", where=stale
                ):
                    reaped.append(Reaped(task_id, worker, State.MERGING))
                continue
            if task.cancel_requested_at is not None:
                outcome, reason = State.CANCELLED, f"{gone}; cancel was requested"
            elif task.attempts >= max_attempts:
                outcome = State.FAILED
                reason = f"{gone} on attempt {task.attempts} of {max_attempts}; giving up"
            else:
                outcome = State.QUEUED
                reason = f"{gone}; re-queued after attempt {task.attempts} of {max_attempts}"
            transition(session, task_id, outcome, reason=reason, actor="reaper", where=same_claim)
            reaped.append(Reaped(task_id, worker, outcome))
        except Conflict:
            continue  # it moved on by itself in the meantime
    return reaped


def release(
    session: Session,
    task_id: int,
    worker_id: str,
    *,
    reason: str,
    by: str | None = None,
    where: Sequence[ColumnElement[bool]] = (),
) -> bool:
    """Give a merge back unfinished so another worker resumes it: the worker itself when it
    shuts down, or the reaper (`by`, with `where` pinning the stale heartbeat it judged)."""
    stmt = (
        update(Task)
        .where(
            col(Task.id) == task_id,
            col(Task.worker_id) == worker_id,
            col(Task.state) == State.MERGING,
            *where,
        )
        .values(worker_id=None, heartbeat_at=None, updated_at=utcnow())
    )
    released = session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    if released:
        record(session, task_id, "released", {"reason": reason, "by": by or worker_id})
        announce(session)
    return released
