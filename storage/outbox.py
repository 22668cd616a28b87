"""The outbox queries that need care: claim due rows under a lease (two notifiers never send
the same row), settle them (delivered, retry later, given up), coalesce card rows (a card
row means "show the task as it is now", so only the newest pending one per task matters),
and keep each thread in order (a task's thread messages go out one after another).

`delivered_at` means settled: delivered, superseded by a newer card row, or given up (then
`given_up_at` is set and `last_error` says why). A row is due when unsettled and its
`next_attempt_at` (a retry time or another notifier's lease) has passed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from storage.models import Outbox, Plan, Task, utcnow

# Rows that post in a task's thread: they go out in the order they were written, so a
# rate-limited or failing one holds back the later ones of its task (never overtaken).
THREAD_KINDS = ("state", "file", "note")


def _due(now: datetime) -> list:
    return [
        col(Outbox.delivered_at).is_(None),
        or_(col(Outbox.next_attempt_at).is_(None), col(Outbox.next_attempt_at) <= now),
    ]


def claim_due(
    session: Session, *, lease_s: float, limit: int = 20, now: datetime | None = None
) -> list[Outbox]:
    """Take up to `limit` due rows, oldest first, leased for `lease_s` seconds: nobody else
    claims them until the lease runs out (a notifier that dies mid-send gives its rows back
    that way). Older pending card rows of a task are settled first: the newest one renders
    the task as it is now, so one edit replaces them all (only card rows: a milestone is never
    superseded). A thread row waits while an earlier thread row of its task is unsettled."""
    now = now or utcnow()
    newer = aliased(Outbox)
    has_newer_card = (
        select(newer.id)
        .where(
            newer.task_id == Outbox.task_id,
            newer.kind == "card",
            newer.delivered_at.is_(None),
            newer.id > Outbox.id,
        )
        .exists()
    )
    session.execute(
        update(Outbox)
        .where(col(Outbox.kind) == "card", *_due(now), has_newer_card)
        .values(delivered_at=now)
        .execution_options(synchronize_session=False)
    )
    earlier = aliased(Outbox)
    has_earlier_in_thread = (
        select(earlier.id)
        .where(
            earlier.task_id == Outbox.task_id,
            earlier.kind.in_(THREAD_KINDS),
            earlier.delivered_at.is_(None),
            earlier.id < Outbox.id,
        )
        .exists()
    )
    in_order = or_(col(Outbox.kind).not_in(THREAD_KINDS), ~has_earlier_in_thread)
    ids = (
        session.execute(
            select(Outbox.id).where(*_due(now), in_order).order_by(col(Outbox.id)).limit(limit)
        )
        .scalars()
        .all()
    )
    lease = now + timedelta(seconds=lease_s)
    claimed: list[Outbox] = []
    for row_id in ids:
        # Conditional on still being due: a racing notifier that got it first wins.
        won = session.execute(
            update(Outbox)
            .where(col(Outbox.id) == row_id, *_due(now))
            .values(next_attempt_at=lease)
            .returning(Outbox),
            execution_options={"populate_existing": True},
        ).scalar()
        if won is not None:
            claimed.append(won)
    return claimed


def renew(session: Session, row: Outbox, *, lease_s: float, now: datetime | None = None) -> bool:
    """Extend our lease on `row` if it is still ours: unsettled, and nobody claimed it since
    (its lease is the one we hold). False: the lease ran out while earlier rows of the batch
    were sent, and another notifier took the row over; it is theirs now, and sending it too
    would post it twice. Checked before each row, and again just before a post goes out."""
    now = now or utcnow()
    lease = now + timedelta(seconds=lease_s)
    won = session.execute(
        update(Outbox)
        .where(
            col(Outbox.id) == row.id,
            col(Outbox.delivered_at).is_(None),
            col(Outbox.next_attempt_at) == row.next_attempt_at,
        )
        .values(next_attempt_at=lease)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        return False
    row.next_attempt_at = lease
    return True


def mark_delivered(session: Session, row_id: int) -> None:
    session.execute(
        update(Outbox)
        .where(col(Outbox.id) == row_id, col(Outbox.delivered_at).is_(None))
        .values(delivered_at=utcnow(), next_attempt_at=None)
    )


def card_moved(
    session: Session, row_id: int, task_id: int, *, thread_ts: str, card_ts: str | None, why: str
) -> None:
    """The old card could not be edited and a fresh one is in Slack: `card_ts` is the card
    when it was posted in the thread `thread_ts`, None when it is the root of a new thread
    `thread_ts` (the old thread is gone). Later edits go to the fresh card and later thread
    messages to `thread_ts`; a short line there says why, and the row is settled."""
    session.execute(
        update(Task).where(col(Task.id) == task_id).values(thread_ts=thread_ts, card_ts=card_ts)
    )
    session.add(Outbox(task_id=task_id, kind="note", payload={"card_moved": why}))
    mark_delivered(session, row_id)


def plan_card_moved(
    session: Session, row_id: int, plan_id: int, *, thread_ts: str, card_ts: str | None, why: str
) -> None:
    """`card_moved` for a plan's card: later edits go to the fresh card (`card_ts`, None
    when it is the root of a new thread `thread_ts`), replies in `thread_ts` re-plan, and a
    `plan_note` row says why there; the row is settled."""
    session.execute(
        update(Plan).where(col(Plan.id) == plan_id).values(thread_ts=thread_ts, card_ts=card_ts)
    )
    session.add(Outbox(kind="plan_note", payload={"plan_id": plan_id, "card_moved": why}))
    mark_delivered(session, row_id)


def card_posted(session: Session, row_id: int, task_id: int, ts: str) -> None:
    """The card is in Slack as message `ts`: it becomes the task's thread, in the same
    transaction that settles the row, so a restart never posts it again."""
    session.execute(
        update(Task)
        .where(col(Task.id) == task_id, col(Task.thread_ts).is_(None))
        .values(thread_ts=ts)
    )
    mark_delivered(session, row_id)


def mark_sending(session: Session, row_id: int) -> None:
    """A post of this row is about to go out: until its answer is recorded, its outcome is
    unknown, and a later attempt must look in Slack before posting again."""
    session.execute(
        update(Outbox)
        .where(col(Outbox.id) == row_id, col(Outbox.delivered_at).is_(None))
        .values(sent_at=utcnow())
    )


def retry_later(
    session: Session, row_id: int, *, error: str, at: datetime, not_sent: bool = False
) -> None:
    """Count a failed attempt; `not_sent`: Slack answered that it did not post (429, an
    error), so the next attempt need not look for the message first."""
    values: dict[str, object] = {
        "attempts": col(Outbox.attempts) + 1,
        "last_error": error,
        "next_attempt_at": at,
    }
    if not_sent:
        values["sent_at"] = None
    session.execute(
        update(Outbox)
        .where(col(Outbox.id) == row_id, col(Outbox.delivered_at).is_(None))
        .values(**values)
    )


def rate_limited(session: Session, row_id: int, *, at: datetime, not_sent: bool = False) -> None:
    """Slack asked us to wait (429): try again `at`, without counting an attempt; a rate
    limit ends, so it is waited out (up to the notifier's maximum age), not given up."""
    values: dict[str, object] = {"last_error": "ratelimited", "next_attempt_at": at}
    if not_sent:
        values["sent_at"] = None
    session.execute(
        update(Outbox)
        .where(col(Outbox.id) == row_id, col(Outbox.delivered_at).is_(None))
        .values(**values)
    )


def defer(session: Session, row_id: int, *, at: datetime) -> None:
    """Not yet (waiting for the card, or for the edit interval): no attempt is counted."""
    session.execute(
        update(Outbox)
        .where(col(Outbox.id) == row_id, col(Outbox.delivered_at).is_(None))
        .values(next_attempt_at=at)
    )


def give_up(session: Session, row_id: int, *, error: str) -> None:
    now = utcnow()
    session.execute(
        update(Outbox)
        .where(col(Outbox.id) == row_id, col(Outbox.delivered_at).is_(None))
        .values(
            attempts=col(Outbox.attempts) + 1,
            last_error=error,
            delivered_at=now,
            given_up_at=now,
            next_attempt_at=None,
        )
    )


def given_up(session: Session, *, since: datetime) -> Sequence[Outbox]:
    """Rows given up since `since`, newest first (`nightcrew doctor`)."""
    return (
        session.execute(
            select(Outbox)
            .where(col(Outbox.given_up_at) >= since)
            .order_by(col(Outbox.given_up_at).desc(), col(Outbox.id).desc())
        )
        .scalars()
        .all()
    )


def request_card(session: Session, task_id: int) -> None:
    """Ask for the card to be re-rendered, unless a card row is already pending."""
    pending = session.execute(
        select(func.count())
        .select_from(Outbox)
        .where(
            and_(
                col(Outbox.task_id) == task_id,
                col(Outbox.kind) == "card",
                col(Outbox.delivered_at).is_(None),
            )
        )
    ).scalar_one()
    if not pending:
        session.add(Outbox(task_id=task_id, kind="card", payload={}))


def refresh_card(session: Session, task: Task, *, every_s: float) -> bool:
    """Progress (turns, tokens, cost) is worth showing on a long run, but not per turn: ask
    for a card refresh only if the task lives in Slack and no card row was written in the last
    `every_s` seconds. True if one was asked for."""
    if not task.channel or task.id is None:
        return False
    since = utcnow() - timedelta(seconds=every_s)
    recent = session.execute(
        select(Outbox.id).where(
            col(Outbox.task_id) == task.id,
            col(Outbox.kind) == "card",
            col(Outbox.created_at) >= since,
        )
    ).first()
    if recent:
        return False
    request_card(session, task.id)
    return True


def card_wait_s(session: Session, task_id: int) -> float | None:
    """None when no card row of the task is pending; else how long the card will wait at
    least (until its rate limit ends; 0 when it may go any moment)."""
    row = session.execute(
        select(Outbox).where(
            col(Outbox.task_id) == task_id,
            col(Outbox.kind) == "card",
            col(Outbox.delivered_at).is_(None),
        )
    ).scalar()
    if row is None:
        return None
    if row.last_error != "ratelimited" or row.next_attempt_at is None:
        return 0.0
    return max(0.0, (row.next_attempt_at - utcnow()).total_seconds())


def has_pending_card(session: Session, task_id: int) -> bool:
    return bool(
        session.execute(
            select(Outbox.id).where(
                col(Outbox.task_id) == task_id,
                col(Outbox.kind) == "card",
                col(Outbox.delivered_at).is_(None),
            )
        ).first()
    )


def pending(session: Session) -> Sequence[Outbox]:
    """Unsettled rows, oldest first (for status and tests)."""
    return (
        session.execute(
            select(Outbox).where(col(Outbox.delivered_at).is_(None)).order_by(col(Outbox.id))
        )
        .scalars()
        .all()
    )


def queue_reaction(
    session: Session, task_id: int, ts: str, name: str, *, after_nudge: int | None = None
) -> None:
    """React `name` on message `ts` of the task's channel; with `after_nudge`, only once the
    agent has taken that nudge (the notifier waits for its `consumed_at`)."""
    payload: dict[str, object] = {"ts": ts, "name": name}
    if after_nudge is not None:
        payload["after_nudge"] = after_nudge
    session.add(Outbox(task_id=task_id, kind="react", payload=payload))


def drop_reactions(session: Session, task_id: int, ts: str) -> None:
    """Message `ts` was deleted: its reactions not yet added never will be (settled)."""
    rows = session.execute(
        select(Outbox).where(
            col(Outbox.task_id) == task_id,
            col(Outbox.kind) == "react",
            col(Outbox.delivered_at).is_(None),
        )
    )
    for row in rows.scalars().all():
        if row.payload.get("ts") == ts:
            mark_delivered(session, row.id or 0)


def queue_file(session: Session, task_id: int, *, what: str, event_id: int) -> None:
    """Share a file in the task's thread: `what` is "diff" (the whole patch of diff event
    `event_id`) or "interdiff" (what changed since the approval, of proof event `event_id`)."""
    session.add(Outbox(task_id=task_id, kind="file", payload={"what": what, "event": event_id}))


def note_upload(session: Session, row_id: int, file_id: str) -> None:
    """The file an upload of this row is about to share, with the post's start (`sent_at`):
    a later attempt looks for a message sharing exactly that file before sharing again."""
    row = session.get(Outbox, row_id)
    if row is None or row.delivered_at is not None:
        return
    row.payload = {**row.payload, "file_id": file_id}
    row.sent_at = utcnow()
    session.add(row)
