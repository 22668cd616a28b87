"""Slack deliveries taken once (`SlackDelivery`): the key of each request acted on is written
in the transaction of the act itself, so the act and its key commit or roll back together,
and a second delivery of the same request finds the key and the answer it got.

`seen` and `remember` are on every ack's path, inside the writers' turn: plain statements
built once (no ORM identity map, no model construction). Old keys are removed by `prune`,
from the bot's periodic work, never inside an ack's transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, select
from sqlmodel import Session, col

from storage.models import SlackDelivery, utcnow

# Slack redelivers events within minutes and a signed request is good for five: a day of keys
# is plenty.
KEEP = timedelta(days=1)

_REPLY = select(col(SlackDelivery.reply)).where(col(SlackDelivery.key) == bindparam("key"))
_INSERT = insert(SlackDelivery)
_PRUNE = delete(SlackDelivery).where(col(SlackDelivery.created_at) < bindparam("before"))


def seen(session: Session, key: str) -> dict[str, Any] | None:
    """The answer `key` got when it was acted on, or None if it is new."""
    reply = session.connection().execute(_REPLY, {"key": key}).scalar_one_or_none()
    return None if reply is None else dict(reply)


def remember(session: Session, key: str, reply: dict[str, Any]) -> None:
    """Record `key` as acted on, with its answer, in the transaction of the act. If another
    transaction recorded it meanwhile, the insert raises IntegrityError (on PostgreSQL after
    waiting for that transaction's commit) and this one must roll back: the caller looks
    again and finds the other's answer."""
    row = {"key": key, "reply": reply, "created_at": utcnow()}
    session.connection().execute(_INSERT, row)


def prune(session: Session, now: datetime) -> int:
    """Forget keys older than KEEP; how many went. The bot calls it now and then."""
    return session.connection().execute(_PRUNE, {"before": now - KEEP}).rowcount
