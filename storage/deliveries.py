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


def take(session: Session, key: str) -> dict[str, Any] | None:
    """Claim `key` in this transaction: None if it is new (act, then `answer`), else the
    answer stored the first time. On PostgreSQL a concurrent transaction holding the same new
    key makes the flush wait for it, then raise IntegrityError: the caller retries and finds
    it taken."""
    found = session.get(SlackDelivery, key, populate_existing=True)
    if found is not None:
        return dict(found.reply)
    session.add(SlackDelivery(key=key))
    session.flush()
    if zlib.crc32(key.encode()) % PRUNE_EVERY == 0:
        session.execute(
            delete(SlackDelivery).where(col(SlackDelivery.created_at) < utcnow() - KEEP)
        )
    return None


def answer(session: Session, key: str, reply: dict[str, Any]) -> None:
    """Store the answer the request got, for its redeliveries."""
    found = session.get(SlackDelivery, key)
    assert found is not None, "take() first"
    found.reply = reply
    session.add(found)
