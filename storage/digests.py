"""The digest's data and bookkeeping: what happened between two instants (two queries, light
columns only, so 10,000 tasks stay well under 200 ms), the runs already sent (one per target
and fire time, claimed by an insert that a second process cannot repeat), and the people who
asked for it by DM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select
from sqlmodel import Session, col

from storage.lifecycle import WORKING, State
from storage.models import (
    Charge,
    DigestRun,
    DigestSubscriber,
    Outbox,
    Plan,
    Task,
    TaskEvent,
    utcnow,
)

PROMPT_CHARS = 200  # a digest line shows the start of a prompt; the rest stays in the DB
OPEN = frozenset({*WORKING, State.WAITING, State.QUEUED, State.NEEDS_INPUT})
LISTED = frozenset({*OPEN, State.AWAITING_APPROVAL})  # listed as they are now, however old
_RISK_ORDER = {"high": 0, "medium": 1, "low": 2}  # a task without a proof pack counts as medium


@dataclass(frozen=True)
class DigestTask:
    id: int
    repo: str
    state: State
    prompt: str  # the first PROMPT_CHARS characters
    requester: str
    reason: str | None
    proof: dict[str, Any] | None = None  # awaiting approval only: the latest proof pack
    plan_id: int | None = None  # the digest groups a plan's tasks under it

    @property
    def risk(self) -> str:
        return str(((self.proof or {}).get("risk") or {}).get("level", "unknown"))


def riskiest_first(tasks: list[DigestTask]) -> list[DigestTask]:
    return sorted(tasks, key=lambda t: (_RISK_ORDER.get(t.risk, 1), t.id))


@dataclass(frozen=True)
class Totals:
    """Tasks changed in the window with their turns; tokens and cost *spent* in the window
    (the ledger), so a task running across two digests is charged to each for its share, and
    the digest's cost agrees with what the daily budgets counted."""

    tasks: int = 0
    turns: int = 0
    tokens: int = 0
    cost_nanos: int = 0  # exact, from the ledger
    unpriced_tokens: int = 0  # tokens of models without a price: their cost is unknown


@dataclass(frozen=True)
class DigestData:
    """Since `since` until `until`: closed work in the window, open work as it is now."""

    since: datetime
    until: datetime
    awaiting: list[DigestTask] = field(default_factory=list)  # riskiest first
    merged: list[DigestTask] = field(default_factory=list)
    failed: list[DigestTask] = field(default_factory=list)
    open: list[DigestTask] = field(default_factory=list)
    totals: Totals = Totals()

    @property
    def empty(self) -> bool:
        """Nothing to tell: no task listed or touched, and no model call paid for (a planner
        run alone still spent money)."""
        listed = self.awaiting or self.merged or self.failed or self.open
        return not (listed or self.totals.tasks or self.totals.tokens)


def collect(
    session: Session, since: datetime, until: datetime, *, requester: str | None = None
) -> DigestData:
    """Tasks awaiting approval or still open (now), merged or failed in (since, until], and
    totals: tasks touched in the window with their turns, tokens and cost spent in it.
    `requester`: only that person's tasks (a DM digest).

    Core rows rather than ORM objects, and the window tests done by the database: at
    10,000 tasks, loading entities and converting timestamps cost more than the query."""
    mine = [col(Task.requester) == requester] if requester else []
    touched = and_(col(Task.updated_at) > since, col(Task.updated_at) <= until)
    finished = and_(
        col(Task.state).in_([State.MERGED, State.FAILED]),
        col(Task.finished_at) > since,
        col(Task.finished_at) <= until,
    )
    query = (
        select(
            Task.id,
            Task.repo,
            Task.state,
            func.substr(Task.prompt, 1, PROMPT_CHARS),
            Task.requester,
            Task.reason,
            Task.turns,
            Task.plan_id,
            touched.label("touched"),
            finished.label("finished"),
        )
        .where(or_(col(Task.state).in_(LISTED), finished, touched), *mine)
        .order_by(col(Task.id))
    )
    lists: dict[State, list[DigestTask]] = {s: [] for s in State}
    tasks = turns = 0
    open_: list[DigestTask] = []
    rows = session.connection().execute(query).all()  # one fetchall: row by row costs more
    for row in rows:
        tid, repo, state, prompt, who, reason, n_turns, plan_id = row[:8]
        if row.touched:
            tasks, turns = tasks + 1, turns + n_turns
        state = State(state)
        if state in OPEN:
            open_.append(DigestTask(tid, repo, state, prompt, who, reason, plan_id=plan_id))
        elif state in LISTED or row.finished:  # cancelled or rejected count in the totals only
            lists[state].append(DigestTask(tid, repo, state, prompt, who, reason, plan_id=plan_id))
    awaiting = lists[State.AWAITING_APPROVAL]
    proofs = _proofs(session, [t.id for t in awaiting])
    return DigestData(
        since,
        until,
        awaiting=riskiest_first([replace(t, proof=proofs.get(t.id)) for t in awaiting]),
        merged=lists[State.MERGED],
        failed=lists[State.FAILED],
        open=open_,
        totals=Totals(tasks, turns, *_spent(session, since, until, requester)),
    )


def _spent(
    session: Session, since: datetime, until: datetime, requester: str | None
) -> tuple[int, int, int]:
    """Tokens, exact cost and unpriced tokens of the model calls made in (since, until].
    `requester`: the calls of their tasks and of the planner runs of their plans (a planner's
    charge names its plan and no task); a run that made no plan names neither, so only the
    channel digest counts it."""
    tokens = Charge.tokens_in + Charge.tokens_out
    query = select(
        func.coalesce(func.sum(tokens), 0),
        func.coalesce(func.sum(Charge.cost_nanos), 0),
        func.coalesce(func.sum(case((col(Charge.cost_nanos).is_(None), tokens), else_=0)), 0),
    ).where(col(Charge.at) > since, col(Charge.at) <= until)
    if requester:
        query = (
            query.outerjoin(Task, col(Task.id) == Charge.task_id)
            .outerjoin(Plan, and_(col(Charge.task_id).is_(None), col(Plan.id) == Charge.plan_id))
            .where(or_(col(Task.requester) == requester, col(Plan.requester) == requester))
        )
    n_tokens, nanos, unpriced = session.connection().execute(query).one()
    return int(n_tokens), int(nanos), int(unpriced)


def _proofs(session: Session, task_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The newest proof pack of each task."""
    if not task_ids:
        return {}
    newest = (
        select(func.max(TaskEvent.id))
        .where(col(TaskEvent.kind) == "proof", col(TaskEvent.task_id).in_(task_ids))
        .group_by(col(TaskEvent.task_id))
    )
    rows = session.execute(
        select(TaskEvent.task_id, TaskEvent.payload).where(col(TaskEvent.id).in_(newest))
    ).all()
    return {task_id: payload for task_id, payload in rows}


# --- runs -------------------------------------------------------------------------------


def last_run(session: Session, target: str) -> datetime | None:
    """The fire time of the newest digest sent to `target`."""
    return session.execute(
        select(func.max(DigestRun.fire_at)).where(col(DigestRun.target) == target)
    ).scalar()


def last_run_any(session: Session, targets: Sequence[str]) -> datetime | None:
    if not targets:
        return None
    return session.execute(
        select(func.max(DigestRun.fire_at)).where(col(DigestRun.target).in_(targets))
    ).scalar()


def claim_run(session: Session, target: str, fire_at: datetime) -> bool:
    """Record the digest for (`target`, `fire_at`); False if some process already did. An
    insert that does nothing on conflict, so the loser's transaction stays usable (on
    PostgreSQL a failed insert would abort it) and the winner is decided by the unique key."""
    values = {"target": target, "fire_at": fire_at, "created_at": utcnow()}
    # Imported here: the PostgreSQL dialect costs every process ~35 ms, for this insert only.
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(DigestRun).values(**values).on_conflict_do_nothing().returning(DigestRun.id)
    return session.execute(stmt).first() is not None


def queue_post(session: Session, channel: str, text: str, blocks: list[dict[str, Any]]) -> None:
    """A message for the notifier to post in `channel` (a channel id, or a user id: a DM)."""
    session.add(Outbox(kind="post", payload={"channel": channel, "text": text, "blocks": blocks}))


# --- DM subscribers ---------------------------------------------------------------------


def subscribers(session: Session) -> list[str]:
    return list(
        session.execute(select(DigestSubscriber.user).order_by(col(DigestSubscriber.user)))
        .scalars()
        .all()
    )


def subscribe(session: Session, user: str) -> bool:
    """True if `user` was not subscribed before."""
    if session.get(DigestSubscriber, user) is not None:
        return False
    session.add(DigestSubscriber(user=user))
    return True


def unsubscribe(session: Session, user: str) -> bool:
    """True if `user` was subscribed."""
    gone = session.execute(delete(DigestSubscriber).where(col(DigestSubscriber.user) == user))
    return bool(gone.rowcount)
