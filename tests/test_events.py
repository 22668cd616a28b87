"""The event log keeps what happened and nothing that could fool a terminal; a cancel
request lasts for one stint of work."""

from __future__ import annotations

from sqlalchemy import Engine

from storage.db import transaction
from storage.lifecycle import State
from storage.models import utcnow
from storage.queue import claim_next
from storage.tasks import create_task, events, get_task, record, transition


def test_terminal_escapes_are_dropped_from_events_newlines_and_tabs_kept(engine: Engine) -> None:
    with transaction(engine) as s:
        task = create_task(s, repo="app", prompt="x", requester="U1")
        assert task.id is not None
        evil = "done\x1b[2K\x1b]0;pwned\x07\rfake line\n\tnext\x9b31m"
        record(s, task.id, "turn", {"calls": [{"output": evil}], "n": 3})
    with transaction(engine) as s:
        payload = events(s, task.id)[-1].payload
    assert payload == {"calls": [{"output": "done[2K]0;pwnedfake line\n\tnext31m"}], "n": 3}


def test_a_cancel_request_does_not_outlive_the_work_it_was_for(engine: Engine) -> None:
    with transaction(engine) as s:
        task = create_task(s, repo="app", prompt="x", requester="U1")
        assert task.id is not None
    with transaction(engine) as s:
        claim_next(s, "w1")
        transition(s, task.id, State.RUNNING)
        running = get_task(s, task.id)
        running.cancel_requested_at, running.cancel_requested_by = utcnow(), "U1"
        s.add(running)
    with transaction(engine) as s:
        parked = transition(s, task.id, State.AWAITING_APPROVAL)
    assert (parked.cancel_requested_at, parked.cancel_requested_by) == (None, None)
