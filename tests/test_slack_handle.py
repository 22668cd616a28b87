"""The database side of Slack requests that the end-to-end tests reach only through one path:
which thread is a task's, and what of a thread becomes a new task's context."""

from __future__ import annotations

from sqlalchemy import Engine

from bot.slack.handle import is_task_thread, thread_context
from storage.db import transaction
from storage.tasks import create_task


def test_a_task_thread_is_known_by_its_channel_and_ts(engine: Engine) -> None:
    with transaction(engine) as s:
        task = create_task(s, repo="api", prompt="fix", requester="U1", channel="C111")
        task.thread_ts = "1700000000.000100"
        s.add(task)
    assert is_task_thread(engine, "C111", "1700000000.000100")
    assert not is_task_thread(engine, "C222", "1700000000.000100")  # same ts, other channel
    assert not is_task_thread(engine, "C111", "1700000000.000200")


def test_thread_context_keeps_peoples_earlier_messages_in_order() -> None:
    messages = [
        {"user": "U1", "text": "payments flake on Mondays", "ts": "1.000001"},
        {"user": "UB", "bot_id": "B1", "text": "Task 3 started working", "ts": "1.000002"},
        {"user": "U2", "text": "   ", "ts": "1.000003"},
        {"text": "no author", "ts": "1.000004"},
        {"user": "U3", "text": " timezone bug? ", "ts": "1.000005"},
        {"user": "U1", "text": "@nightcrew fix this", "ts": "1.000006"},  # the mention
        {"user": "U4", "text": "written after", "ts": "1.000007"},
    ]
    assert thread_context(messages, before_ts="1.000006") == (
        "Context: the Slack thread this was asked in:\n"
        "<@U1>: payments flake on Mondays\n"
        "<@?>: no author\n"
        "<@U3>: timezone bug?"
    )


def test_thread_context_keeps_the_newest_when_there_is_too_much_and_nothing_when_empty() -> None:
    messages = [{"user": "U1", "text": f"message {i}", "ts": f"1.{i:06d}"} for i in range(10)]
    context = thread_context(messages, before_ts="2.0", limit=30)
    body = context.split("\n", 1)[1]
    assert body.startswith("…") and len(body) == 31
    assert body.endswith("<@U1>: message 9") and "message 0" not in body
    full = thread_context(messages, before_ts="2.0")  # the default limit holds all ten
    assert "<@U1>: message 0\n" in full and full.endswith("<@U1>: message 9")
    assert thread_context(messages, before_ts="1.000000") == ""
    assert thread_context([], before_ts="2.0") == ""
