"""The outbox queries behind the notifier, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from storage import outbox
from storage.db import transaction
from storage.models import utcnow
from storage.tasks import create_task, get_task, notify


def _task_with_cards(engine: Engine, cards: int) -> int:
    with transaction(engine) as session:
        task = create_task(session, repo="api", prompt="fix", requester="U1", channel="C1")
        for _ in range(cards - 1):
            notify(session, task, "card", {})
        assert task.id is not None
        return task.id


def test_pending_cards_of_a_task_coalesce_into_the_newest(engine: Engine) -> None:
    task_id = _task_with_cards(engine, 3)
    with transaction(engine) as session:
        claimed = outbox.claim_due(session, lease_s=30)
    assert len(claimed) == 1 and claimed[0].task_id == task_id
    with transaction(engine) as session:
        assert [r.id for r in outbox.pending(session)] == [claimed[0].id]


def test_a_leased_row_is_claimed_by_one_notifier_until_the_lease_ends(engine: Engine) -> None:
    _task_with_cards(engine, 1)
    with transaction(engine) as session:
        (row,) = outbox.claim_due(session, lease_s=30)
    with transaction(engine) as session:
        assert outbox.claim_due(session, lease_s=30) == []
        later = utcnow() + timedelta(seconds=31)
        assert [r.id for r in outbox.claim_due(session, lease_s=30, now=later)] == [row.id]


def test_a_row_taken_over_after_its_lease_ran_out_is_no_longer_the_first_claimers(
    engine: Engine,
) -> None:
    # A batch's lease can run out while its earlier rows are sent (pacing, slow calls): the
    # late rows are then claimed again by another notifier, and only that one may send them.
    _task_with_cards(engine, 1)
    with transaction(engine) as session:
        (first,) = outbox.claim_due(session, lease_s=30)
        session.expunge(first)
    later = utcnow() + timedelta(seconds=31)
    with transaction(engine) as session:
        (second,) = outbox.claim_due(session, lease_s=30, now=later)
        session.expunge(second)
    with transaction(engine) as session:
        assert not outbox.renew(session, first, lease_s=30)  # the first notifier skips it
        assert outbox.renew(session, second, lease_s=30)  # the second holds it, renewed
        assert outbox.renew(session, second, lease_s=30)  # as often as it needs to
    with transaction(engine) as session:
        assert second.id is not None
        outbox.mark_delivered(session, second.id)
        assert not outbox.renew(session, second, lease_s=30)  # settled: nobody's to send


def test_settling_rows(engine: Engine) -> None:
    task_id = _task_with_cards(engine, 1)
    with transaction(engine) as session:
        (row,) = outbox.claim_due(session, lease_s=30)
        assert row.id is not None
        outbox.retry_later(session, row.id, error="ratelimited", at=utcnow())
    with transaction(engine) as session:
        (again,) = outbox.claim_due(session, lease_s=30)
        assert (again.attempts, again.last_error) == (1, "ratelimited")
        outbox.card_posted(session, row.id, task_id, "123.456")
        outbox.request_card(session, task_id)
        outbox.request_card(session, task_id)  # one pending card row is enough
    with transaction(engine) as session:
        assert get_task(session, task_id).thread_ts == "123.456"
        (pending,) = outbox.pending(session)
        assert pending.id is not None
        outbox.give_up(session, pending.id, error="channel_not_found")
        assert outbox.pending(session) == []


def test_progress_refreshes_the_card_at_most_once_per_interval(engine: Engine) -> None:
    with transaction(engine) as s:
        in_slack = create_task(s, repo="app", prompt="x", requester="U1", channel="C1")
        local = create_task(s, repo="app", prompt="y", requester="U1")
    with transaction(engine) as s:
        assert not outbox.refresh_card(s, local, every_s=0)  # not in Slack: nothing to refresh
        assert not outbox.refresh_card(s, in_slack, every_s=60)  # its card row is seconds old
        before = len(outbox.pending(s))
    with transaction(engine) as s:
        assert outbox.refresh_card(s, in_slack, every_s=0)
    with transaction(engine) as s:
        assert len(outbox.pending(s)) == before  # a card row is already pending: they coalesce
