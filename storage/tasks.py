"""Task operations that need care: create, read, state changes (with their event and outbox
rows in the same transaction), the event log and nudges."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, bindparam, insert, update
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import Session, col, select

from storage import nudge_files
from storage.defaults import NUDGE_FILES_WAIT_S
from storage.errors import Conflict, TaskNotFound
from storage.lifecycle import CLOSED, WORKING, State, check_transition
from storage.models import Nudge, Outbox, Priority, Task, TaskEvent, utcnow
from storage.wakeup import announce


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "task"


# Statements built once: composing a statement and its cache key costs more than running it
# (this is the slash command's ack path, so it counts).
_INSERT_TASK = insert(Task).returning(col(Task.id))
_SET_BRANCH = update(Task).where(col(Task.id) == bindparam("tid")).values(branch=bindparam("b"))
_INSERT_EVENT = insert(TaskEvent)
_INSERT_OUTBOX = insert(Outbox)


def create_task(
    session: Session,
    *,
    repo: str,
    prompt: str,
    requester: str,
    priority: Priority = Priority.NORMAL,
    source: str = "cli",
    channel: str | None = None,
    thread_ts: str | None = None,
) -> Task:
    """A queued task with its `created` event and, if it lives in Slack, its card row; four
    plain statements (no ORM flush), since this is the slash command's ack path."""
    now = utcnow()
    values: dict[str, Any] = dict(
        repo=repo,
        prompt=prompt,
        requester=requester,
        priority=int(priority),
        source=source,
        channel=channel,
        thread_ts=thread_ts,
        state=State.QUEUED,
        created_at=now,
        updated_at=now,
    )
    conn = session.connection()
    task_id = conn.execute(_INSERT_TASK, values).scalar_one()
    branch = f"nightcrew/{task_id}-{slugify(prompt)}"  # the id is part of the name
    conn.execute(_SET_BRANCH, {"tid": task_id, "b": branch})
    created = {"by": requester, "repo": repo, "source": source}
    conn.execute(
        _INSERT_EVENT,
        {"task_id": task_id, "kind": "created", "payload": created, "created_at": now},
    )
    if channel:  # as notify(): only tasks that live in Slack get a card
        conn.execute(
            _INSERT_OUTBOX, {"task_id": task_id, "kind": "card", "payload": {}, "created_at": now}
        )
    announce(session)  # idle executors claim it when this commits
    # Handed back as a clean persistent object, as a flush would have left it.
    task = Task(id=task_id, branch=branch, **values)
    make_transient_to_detached(task)
    session.add(task)
    return task


def get_task(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id, populate_existing=True)
    if task is None:
        raise TaskNotFound(task_id)
    return task


def list_tasks(
    session: Session,
    *,
    states: Iterable[State] | None = None,
    include_closed: bool = False,
    repo: str | None = None,
    requester: str | None = None,
    limit: int | None = None,
) -> Sequence[Task]:
    query = select(Task).order_by(col(Task.id).desc())
    if states is not None:
        query = query.where(col(Task.state).in_(list(states)))
    elif not include_closed:
        query = query.where(col(Task.state).not_in(list(CLOSED)))
    if repo is not None:
        query = query.where(Task.repo == repo)
    if requester is not None:
        query = query.where(Task.requester == requester)
    if limit is not None:
        query = query.limit(limit)
    return session.exec(query).all()


def transition(
    session: Session,
    task_id: int,
    to: State,
    *,
    reason: str | None = None,
    actor: str | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    **fields: Any,
) -> Task:
    """Move a task to `to`, or raise (IllegalTransition, Conflict, TaskNotFound) and write
    nothing. The UPDATE is conditional on the state we read, so two racing writers cannot
    both win; `where` adds conditions (e.g. the worker still owns the task)."""
    task = get_task(session, task_id)
    src = State(task.state)
    check_transition(src, to)
    now = utcnow()
    values: dict[str, Any] = {"state": to, "reason": reason, "updated_at": now}
    # A wait for the model belongs to one stint of work: whatever moved the task (the model
    # back, a park, the reaper after a crash mid-wait) ends it.
    values |= {"model_wait_since": None, "model_wait": None}
    if to not in WORKING:
        values |= {"worker_id": None, "heartbeat_at": None}
        if to is not State.CANCELLED:  # a cancel request is for one stint of work only
            values |= {"cancel_requested_at": None, "cancel_requested_by": None}
    if to in CLOSED or to is State.FAILED:
        values["finished_at"] = now
    if to is State.FAILED:
        values["error"] = reason
    values |= fields
    stmt = (
        update(Task)
        .where(col(Task.id) == task_id, col(Task.state) == src, *where)
        .values(**values)
        .returning(Task)
    )
    updated = session.execute(stmt, execution_options={"populate_existing": True}).scalar()
    if updated is None:
        raise Conflict(f"task {task_id} changed while it was being updated; try again")
    payload = {"from": src.value, "to": to.value, "reason": reason, "by": actor}
    record(session, task_id, "state", payload)
    notify(session, updated, "state", payload)
    if updated.plan_id is not None and updated.channel:  # the plan's card shows progress
        session.add(Outbox(kind="plan", payload={"plan_id": updated.plan_id}))
    if to in (State.QUEUED, State.MERGING):  # a worker's to take (a merge: unclaimed)
        announce(session)
    return updated


def record(session: Session, task_id: int, kind: str, payload: dict[str, Any]) -> TaskEvent:
    """Append one line to the task's event log. Control characters (terminal escapes an agent
    might print to fake or erase log lines) are dropped on the way in (storage.text), as from
    every column; newlines and tabs stay."""
    event = TaskEvent(task_id=task_id, kind=kind, payload=payload)
    session.add(event)
    return event


def notify(session: Session, task: Task, kind: str, payload: dict[str, Any]) -> None:
    """Queue a Slack delivery about `task`, if it lives in Slack. `card` means "make the card
    show the task as it is now", so any number of pending card rows collapse into one edit."""
    if task.channel:
        session.add(Outbox(task_id=task.id, kind=kind, payload=payload))


def events(session: Session, task_id: int, *, after_id: int = 0) -> Sequence[TaskEvent]:
    query = (
        select(TaskEvent)
        .where(TaskEvent.task_id == task_id, col(TaskEvent.id) > after_id)
        .order_by(col(TaskEvent.id))
    )
    return session.exec(query).all()


def add_nudge(
    session: Session,
    task_id: int,
    *,
    text: str,
    author: str,
    source: str = "cli",
    slack_ts: str | None = None,
    files: list[dict[str, Any]] | None = None,
) -> Nudge:
    """A nudge; with `files` (a Slack reply's, see `nudge_files.refs`) it waits for their
    content (`complete_nudge_files`) before the agent takes it."""
    nudge = Nudge(
        task_id=task_id,
        text=text,
        author=author,
        source=source,
        slack_ts=slack_ts,
        files=files or None,
        files_pending=bool(files),
    )
    session.add(nudge)
    session.flush()
    payload: dict[str, Any] = {"id": nudge.id, "by": author, "text": text}
    if files:
        payload["files"] = [nudge_files.name(f) for f in files]
    record(session, task_id, "nudge", payload)
    return nudge


def _live(query: Any) -> Any:
    return query.where(col(Nudge.consumed_at).is_(None), col(Nudge.deleted_at).is_(None))


def nudges(session: Session, task_id: int, *, pending_only: bool = False) -> Sequence[Nudge]:
    """The task's nudges; `pending_only`: those the agent would take now (unread, not
    deleted, files not being fetched)."""
    query = select(Nudge).where(Nudge.task_id == task_id).order_by(col(Nudge.id))
    if pending_only:
        query = _live(query).where(col(Nudge.files_pending).is_(False))
    return session.exec(query).all()


def take_nudges(
    session: Session, task_id: int, *, files_wait_s: float = NUDGE_FILES_WAIT_S
) -> list[Nudge]:
    """The task's unconsumed nudges, marked consumed (the agent has now been told), in the
    order they were sent, up to the first one whose files are still being fetched: it and
    what came after it wait for the next turn. One waiting longer than `files_wait_s` lost
    its fetcher: it is taken with a note that its files could not be read, and its author
    is told in the thread. Rows are locked while read (PostgreSQL), so an edit or a fetch
    racing this either lands first and is what the agent reads, or finds the nudge taken."""
    query = _live(select(Nudge).where(Nudge.task_id == task_id))
    rows = list(session.exec(query.order_by(col(Nudge.id)).with_for_update()).all())
    now = utcnow()
    taken: list[Nudge] = []
    for nudge in rows:
        if nudge.files_pending:
            if nudge.created_at > now - timedelta(seconds=files_wait_s):
                break
            _give_up_files(session, nudge)
        nudge.consumed_at = now
        session.add(nudge)
        taken.append(nudge)
    if taken:
        record(session, task_id, "nudges_taken", {"ids": [n.id for n in taken]})
    return taken


def _give_up_files(session: Session, nudge: Nudge) -> None:
    files = nudge.files or []
    nudge.text = "\n\n".join(filter(None, [nudge.text.strip(), nudge_files.missed_note(files)]))
    nudge.files_pending = False
    names = [nudge_files.name(f) for f in files]
    record(session, nudge.task_id, "nudge_files_missed", {"id": nudge.id, "files": names})
    task = session.get(Task, nudge.task_id)
    if task is not None:
        notify(session, task, "note", {"files_missed": {"author": nudge.author, "files": names}})


def complete_nudge_files(session: Session, nudge_id: int, note: str) -> bool:
    """The fetched files of a nudge (`note`: their content as the agent reads it) join its
    text, after whatever it says now (an edit may have replaced it); False if the agent took
    it first, the reply was deleted, or another fetch completed it."""
    query = _live(select(Nudge).where(col(Nudge.id) == nudge_id, col(Nudge.files_pending)))
    nudge = session.exec(query.with_for_update()).first()
    if nudge is None:
        return False
    nudge.text = "\n\n".join(filter(None, [nudge.text.strip(), note.strip()]))
    nudge.files_pending = False
    session.add(nudge)
    names = [nudge_files.name(f) for f in nudge.files or []]
    record(session, nudge.task_id, "nudge_files", {"id": nudge_id, "files": names})
    return True


def awaiting_files(session: Session, *, before: datetime) -> list[tuple[int, str, str, str]]:
    """Nudges written before `before` whose files were never fetched (their fetcher died),
    with where to answer: (nudge id, author, channel, thread ts)."""
    query = _live(
        select(Nudge.id, Nudge.author, Task.channel, Task.thread_ts)
        .join(Task, col(Task.id) == col(Nudge.task_id))
        .where(col(Nudge.files_pending), col(Nudge.created_at) < before)
    )
    return [(i, a, c or "", t or "") for i, a, c, t in session.exec(query.order_by(col(Nudge.id)))]


def edit_nudge(session: Session, nudge_id: int, text: str, *, by: str) -> bool:
    """Replace a nudge's text if the agent has not taken it yet (one conditional UPDATE, so
    a racing `take_nudges` and this agree on which text the agent read); False if taken.
    Files still being fetched join the new text when they come."""
    done = session.execute(_live(update(Nudge).where(col(Nudge.id) == nudge_id)).values(text=text))
    if not done.rowcount:  # type: ignore[attr-defined]
        return False
    nudge = session.get(Nudge, nudge_id)
    assert nudge is not None
    session.refresh(nudge)
    record(session, nudge.task_id, "nudge_edited", {"id": nudge_id, "by": by, "text": text})
    return True


REVISION_BY = "revision requested by {actor}"  # the reason of a re-queue by a nudge
_UNDOABLE = (State.NEEDS_INPUT, State.AWAITING_APPROVAL, State.FAILED)


class _Requeue(NamedTuple):
    """A reply's re-queue of a waiting task: where the task waited, why, and the state moves
    made since (oldest first)."""

    came_from: State
    reason: str | None
    since: list[dict[str, Any]]


def _moves(session: Session, task_id: int) -> list[TaskEvent]:
    """The task's state moves and nudges, oldest first: what a re-queue is read from."""
    return list(
        session.exec(
            select(TaskEvent)
            .where(TaskEvent.task_id == task_id, col(TaskEvent.kind).in_(("state", "nudge")))
            .order_by(col(TaskEvent.id))
        ).all()
    )


def _requeue_by(moves: list[TaskEvent], nudge: Nudge) -> _Requeue | None:
    """The re-queue `nudge` caused, read from `moves`: the move into the waiting state, the
    nudge, the re-queue, in a row. None when it queued nothing."""
    at = next(
        (i for i, e in enumerate(moves) if e.kind == "nudge" and e.payload.get("id") == nudge.id),
        None,
    )
    if at is None or at == 0 or at + 1 >= len(moves):
        return None
    before, requeue = moves[at - 1], moves[at + 1]
    came_from = requeue.payload.get("from")
    if (
        before.kind != "state"
        or requeue.kind != "state"
        or requeue.payload.get("reason") != REVISION_BY.format(actor=nudge.author)
        or came_from not in {s.value for s in _UNDOABLE}
        or before.payload.get("to") != came_from
    ):
        return None
    since = [e.payload for e in moves[at + 2 :] if e.kind == "state"]
    return _Requeue(State(came_from), before.payload.get("reason"), since)


def undo_requeue(session: Session, task_id: int) -> State | None:
    """A reply had queued its waiting task again (needs input, awaiting approval, failed) and
    every reply since is withdrawn: unless a worker has taken the task meanwhile, it goes
    back where it was, with the reason it had there. The state it went back to, or None."""
    task = get_task(session, task_id)
    if task.state is not State.QUEUED:
        return None
    if session.exec(_live(select(Nudge.id).where(Nudge.task_id == task_id))).first():
        return None
    moves = _moves(session, task_id)
    # The task's last move is the re-queue, and the event just before it the reply's nudge.
    last = max((i for i, e in enumerate(moves) if e.kind == "state"), default=0)
    said = moves[last - 1] if last > 0 and moves[last - 1].kind == "nudge" else None
    nudge = session.get(Nudge, said.payload.get("id")) if said is not None else None
    found = _requeue_by(moves, nudge) if nudge is not None else None
    if nudge is None or found is None:
        return None
    try:
        transition(session, task_id, found.came_from, reason=found.reason, actor=nudge.author)
    except Conflict:  # a worker took it meanwhile: it runs without the reply
        return None
    return found.came_from


def round_goes_on(session: Session, nudge_id: int) -> bool:
    """Whether nudge `nudge_id` queued its task again and a worker has taken up the round it
    began, still under way (not parked since): withdrawn now, it runs without the words."""
    nudge = session.get(Nudge, nudge_id)
    assert nudge is not None
    found = _requeue_by(_moves(session, nudge.task_id), nudge)
    if found is None or not found.since:
        return False
    busy = {s.value for s in WORKING} | {State.QUEUED.value}  # a crash re-queues the round
    return get_task(session, nudge.task_id).state.value in busy and all(
        move.get("to") in busy for move in found.since
    )


def withdraw_nudge(session: Session, nudge_id: int) -> bool:
    """The reply behind a nudge was deleted: unless the agent has read it, it never will,
    and its words leave the task's log (the person took them back). False if already read."""
    done = session.execute(
        _live(update(Nudge).where(col(Nudge.id) == nudge_id)).values(
            deleted_at=utcnow(), text="", files=None, files_pending=False
        )
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        return False
    nudge = session.get(Nudge, nudge_id)
    assert nudge is not None
    session.refresh(nudge)
    said = session.exec(
        select(TaskEvent).where(
            TaskEvent.task_id == nudge.task_id,
            col(TaskEvent.kind).in_(("nudge", "nudge_edited")),
        )
    ).all()
    for event in said:
        if event.payload.get("id") == nudge_id:
            event.payload = {**event.payload, "text": "(deleted in Slack)", "files": []}
            session.add(event)
    record(session, nudge.task_id, "nudge_deleted", {"id": nudge_id, "by": nudge.author})
    return True
