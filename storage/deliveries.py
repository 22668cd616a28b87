"""Slack deliveries taken once (`SlackDelivery`): the key of each request acted on is written
in the transaction of the act itself, so the act and its key commit or roll back together,
and a second delivery of the same request finds the key and the answer it got."""

from __future__ import annotations

import zlib
from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col

from storage.models import SlackDelivery, utcnow

# Slack redelivers events within minutes and a signed request is good for five: a day of keys
# is plenty. Old keys are pruned by about one request in PRUNE_EVERY, so no loop is needed.
KEEP = timedelta(days=1)
PRUNE_EVERY = 100


def seen(session: Session, key: str) -> dict[str, Any] | None:
    """The answer `key` got when it was acted on, or None if it is new."""
    found = session.get(SlackDelivery, key, populate_existing=True)
    return None if found is None else dict(found.reply)


def remember(session: Session, key: str, reply: dict[str, Any]) -> None:
    """Record `key` as acted on, with its answer, in the transaction of the act. If another
    transaction recorded it meanwhile, the flush raises IntegrityError (on PostgreSQL after
    waiting for that transaction's commit) and this one must roll back: the caller looks
    again and finds the other's answer."""
    session.add(SlackDelivery(key=key, reply=reply))
    session.flush()
    if zlib.crc32(key.encode()) % PRUNE_EVERY == 0:
        old = col(SlackDelivery.created_at) < utcnow() - KEEP
        session.execute(delete(SlackDelivery).where(old))
