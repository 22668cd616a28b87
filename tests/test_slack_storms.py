"""Slack under pressure, against the emulator with real notifier threads: a rate-limit storm
loses nothing, keeps every thread in order and posts nothing twice; a message rate limited
past the maximum age is given up where people see it; a card Slack will no longer let us
edit is posted afresh, with a working Approve button."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlmodel import select

from bot.slack import blocks
from bot.slack.notifier import Notifier
from bot.slack.run import notifier_thread
from bot.terminal.doctor import check_deliveries
from executor.config.schema import Config, RepoConfig
from storage import outbox
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Task, TaskEvent
from storage.tasks import create_task, events, get_task, notify, record, transition
from tests.conftest import git
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.slack_emulator import (
    Call,
    Message,
    SlackEmulator,
    app_mention,
    block_action,
    slash_command,
)
from tests.slack_fixtures import FAST, card_of, serve_http, slack_env
from tests.waiting import wait_for
from tests.worker_fixtures import RunWorker

REQUESTER = "U111"
CHANNEL = "C111"
STORM_S = 60.0


def _settled(engine: Engine) -> bool:
    with transaction(engine) as session:
        return not outbox.pending(session)


def _task(engine: Engine, task_id: int) -> Task:
    with transaction(engine) as session:
        return get_task(session, task_id)


def _replies(slack: SlackEmulator, task: Task, thread_ts: str | None = None) -> list[Message]:
    """The messages in the task's thread (or in `thread_ts`'s), its root left out."""
    root = thread_ts or task.thread_ts
    assert task.channel and root
    return [m for m in slack.thread(task.channel, root) if m.ts != root]


def _milestones(engine: Engine, task_id: int) -> list[str]:
    """The thread lines the task's state changes should have produced, in order."""
    with transaction(engine) as session:
        task = get_task(session, task_id)
        lines = [
            blocks.milestone(task, e.payload) for e in events(session, task_id) if e.kind == "state"
        ]
    return [line for line in lines if line is not None]


# -- the storm --------------------------------------------------------------------------


def _progress(engine: Engine, task_id: int, pause: float, stop: threading.Event) -> None:
    """One task's life, a step every `pause` seconds: it runs, asks a question, is queued
    again, runs, parks with a proof pack, is approved and merged (six milestones)."""
    steps: list[tuple[State, dict[str, object]]] = [
        (State.PREPARING, {}),
        (State.RUNNING, {}),
        (State.NEEDS_INPUT, {"reason": "which branch should it target?"}),
        (State.QUEUED, {"reason": "answered in the thread"}),
        (State.PREPARING, {}),
        (State.RUNNING, {}),
        (State.AWAITING_APPROVAL, {"reason": "done", "summary": "fixed it"}),
        (State.MERGING, {}),
        (State.MERGED, {"merge_commit": f"{task_id:040x}"}),
    ]
    for to, fields in steps:
        if stop.wait(pause):
            return
        with transaction(engine) as session:
            if to is State.AWAITING_APPROVAL:
                record(session, task_id, "proof", {"diff_stat": " app.py | 2 +-"})
            transition(session, task_id, to, actor="w1", **fields)  # type: ignore[arg-type]


def _too_early(calls: list[Call]) -> list[tuple[Call, Call]]:
    """Pairs (a 429 answer, a later call of the same method) where the later call came
    inside the Retry-After it was given. A call already on its way when the 429 was sent
    (half a second, on a loaded box) is not counted: it could not have known."""
    early = []
    for i, limited in enumerate(calls):
        if limited.status != 429 or limited.retry_after is None:
            continue
        for later in calls[i + 1 :]:
            if later.method != limited.method:
                continue
            if limited.at + 0.5 < later.at < limited.at + limited.retry_after - 0.05:
                early.append((limited, later))
    return early


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # one run: it takes a minute
def test_a_minute_long_429_storm_delivers_every_milestone_once_in_order(
    slack: SlackEmulator, engine: Engine
) -> None:
    slack.storm("chat.postMessage", "chat.update", seconds=STORM_S, retry_after=(1, 3))
    began = time.monotonic()
    with transaction(engine) as session:
        ids = [
            create_task(
                session, repo="api", prompt=f"task {i}", requester=REQUESTER, channel=CHANNEL
            ).id
            for i in range(10)
        ]
    stop = threading.Event()
    drivers = [
        threading.Thread(target=_progress, args=(engine, task_id, 2.0 + i * 0.25, stop))
        for i, task_id in enumerate(ids)
    ]
    with ExitStack() as running:
        # Two notifier workers in this process: they share the per-method gate.
        for _ in range(2):
            running.enter_context(notifier_thread(engine, slack_env(slack), FAST))
        for driver in drivers:
            driver.start()
        try:
            for driver in drivers:
                driver.join(STORM_S)
            assert time.monotonic() - began < STORM_S, "the tasks progressed during the storm"
            wait_for(lambda: _settled(engine), STORM_S + 60, "the outbox to drain")
        finally:
            stop.set()

    posts = slack.calls("chat.postMessage")
    assert sum(c.status == 429 for c in posts) >= 10  # the storm did happen
    assert slack.calls("chat.update") and not _too_early(slack.calls())
    cards = [m for m in slack.messages(CHANNEL) if not m.is_reply]
    assert len(cards) == len(ids)  # one card each, none posted twice
    for task_id in ids:
        task = _task(engine, task_id)
        assert task.state is State.MERGED
        said = [m.text for m in _replies(slack, task)]
        assert said == _milestones(engine, task_id), f"task {task_id}'s thread"
        assert len(said) == 6
        card = slack.message(CHANNEL, str(task.thread_ts))
        assert card.text == blocks.card(task)[0] and "Merged" in card.all_text
    with transaction(engine) as session:  # nothing was given up on the way
        assert not outbox.given_up(session, since=task.created_at)


def test_a_storm_does_not_make_a_post_whose_answer_was_lost_appear_twice(
    slack: SlackEmulator, engine: Engine, notifier: Notifier
) -> None:
    # Slack takes the card and the milestone but their answers are lost; then it rate limits
    # the very lookups that would find them, and the posts: nothing may appear twice.
    slack.fail("chat.postMessage", drop=True, applied=True, times=2)
    slack.storm(
        "conversations.history",
        "conversations.replies",
        "chat.postMessage",
        seconds=4,
        retry_after=(1, 1),
    )
    with transaction(engine) as session:
        create_task(session, repo="api", prompt="fix", requester=REQUESTER, channel=CHANNEL)
    with transaction(engine) as session:
        transition(session, 1, State.PREPARING, actor="w1")
        transition(session, 1, State.RUNNING, actor="w1")
    wait_for(lambda: _settled(engine), 30, "the outbox to drain")
    assert len(slack.calls("chat.postMessage", "conversations.history")) > 3
    lookups = slack.calls("conversations.history", "conversations.replies")
    assert any(c.status == 429 for c in lookups) and any(c.ok for c in lookups)
    task = _task(engine, 1)
    assert [m.ts for m in slack.messages(CHANNEL) if not m.is_reply] == [task.thread_ts]
    assert [m.text for m in _replies(slack, task)] == [":gear: Task 1 started working"]


# -- giving up, visibly ------------------------------------------------------------------


def _given_up(reason: str) -> float:
    found = REGISTRY.get_sample_value(
        "nightcrew_slack_deliveries_given_up_total", {"reason": reason}
    )
    return found or 0.0


def test_a_message_rate_limited_past_the_maximum_age_is_given_up_visibly(
    slack: SlackEmulator, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.slack.notifier")
    before = _given_up("too_old")
    slack.storm("chat.postMessage", seconds=30, retry_after=(1, 1))
    with transaction(engine) as session:
        create_task(session, repo="api", prompt="fix", requester=REQUESTER, channel=CHANNEL)
    with notifier_thread(engine, slack_env(slack), replace(FAST, max_age_s=1.5)):
        wait_for(lambda: _settled(engine), 15, "the card to be given up")
    assert slack.messages(CHANNEL) == []
    assert 1 <= len(slack.calls("chat.postMessage")) <= 3  # once per Retry-After, no more
    assert _given_up("too_old") == before + 1
    (warning,) = [r for r in caplog.records if "given up" in r.getMessage()]
    assert "task 1" in warning.getMessage() and "rate limited" in warning.getMessage()
    with transaction(engine) as session:
        (event,) = session.exec(select(TaskEvent).where(TaskEvent.kind == "slack_error")).all()
    assert "rate limited" in event.payload["error"]
    doctor = check_deliveries(engine.url.render_as_string(hide_password=False))
    assert doctor.failed and "1 Slack message(s) given up" in doctor.detail
    assert "task 1" in doctor.detail and "NIGHTCREW_SLACK_MAX_AGE_H" in str(doctor.fix)


def test_a_row_younger_than_the_maximum_age_is_kept_through_many_429s(
    slack: SlackEmulator, engine: Engine, notifier: Notifier
) -> None:
    # Ten attempts used to be the end of a message; 429s are not attempts any more.
    slack.fail("chat.postMessage", status=429, retry_after=0, times=15)
    with transaction(engine) as session:
        create_task(session, repo="api", prompt="fix", requester=REQUESTER, channel=CHANNEL)
    card = card_of(slack, engine)
    assert card.text == "Task 1 (queued): fix"
    assert [c.status for c in slack.calls("chat.postMessage")] == [429] * 15 + [200]


# -- stranded cards ----------------------------------------------------------------------


def test_a_card_slack_will_not_edit_is_posted_again_in_its_thread_and_its_approve_merges(
    slack: SlackEmulator,
    engine: Engine,
    notifier: Notifier,
    make_worker: RunWorker,
    project: Path,
) -> None:
    # A real task: a worker runs it in its sandbox against the scripted model and parks it
    # with its proof; the fresh card's Approve then has a real merge to make.
    config = Config(repos={"app": RepoConfig(path=project)}, channels={CHANNEL: "app"})
    fix = {"path": "calc.py", "old_text": "return a - b", "new_text": "return a + b"}
    script = [reply(tool_call("edit_file", fix)), reply(tool_call("finish", {"summary": "fixed"}))]
    with serve_http(engine, slack, config) as url:
        slack.post_to_app(url, slash_command("fix add() in calc.py", user_id=REQUESTER))
        old = card_of(slack, engine)
        with ScriptedLLM(script) as llm:
            assert make_worker(llm).work(drain=True) == 1
        assert _task(engine, 1).state is State.AWAITING_APPROVAL, _task(engine, 1).reason
        wait_for(lambda: any("ready for review" in m.text for m in slack.messages()), 10, "review")
        wait_for(lambda: _settled(engine), 10, "the outbox to drain")
        slack.refuse_update(CHANNEL, old.ts, "cant_update_message")
        edited = slack.message(CHANNEL, old.ts).edits
        with transaction(engine) as session:  # anything that edits the card: a progress refresh
            outbox.request_card(session, 1)

        def fresh_card() -> Message | None:
            task = _task(engine, 1)
            return slack.message(CHANNEL, task.card_ts) if task.card_ts else None

        card = wait_for(fresh_card, 10, "a fresh card")
        assert card.thread_ts == old.ts and blocks.APPROVE in card.action_ids
        wait_for(lambda: _settled(engine), 10, "the note")
        note = _replies(slack, _task(engine, 1))[-1]
        assert "could no longer be edited" in note.text and "cant_update_message" in note.text
        assert _task(engine, 1).thread_ts == old.ts  # the thread stays where people talk

        home = slack.post_to_app(
            url, dict(app_mention("x"), event={"type": "app_home_opened", "user": REQUESTER})
        )
        assert home.status == 200
        view = slack.wait_until(lambda: slack.home(REQUESTER), what="the App Home")
        assert "Waiting for your approval" in str(view) and blocks.APPROVE in str(view)

        click = block_action(blocks.APPROVE, user=REQUESTER, message=card.to_api())
        assert slack.post_to_app(url, click).status == 200
        wait_for(lambda: _task(engine, 1).state is State.MERGING, 10, "the approval")
        with ScriptedLLM([]) as llm:  # the merge: a worker claims it and lands it
            assert make_worker(llm).work(drain=True) == 1
    merged = _task(engine, 1)
    assert merged.state is State.MERGED, merged.reason
    assert merged.approved_by == REQUESTER
    assert git(project, "rev-parse", "main") == merged.merge_commit
    assert "return a + b" in git(project, "show", "main:calc.py")  # the agent's change landed
    slack.wait_until(
        lambda: "merged" in slack.message(CHANNEL, card.ts).all_text, what="fresh card: merged"
    )
    assert slack.message(CHANNEL, old.ts).edits == edited  # the old one is left alone


def test_a_deleted_card_is_posted_as_a_new_thread_where_later_milestones_go(
    slack: SlackEmulator, engine: Engine, notifier: Notifier
) -> None:
    with transaction(engine) as session:
        create_task(session, repo="api", prompt="fix", requester=REQUESTER, channel=CHANNEL)
    old = card_of(slack, engine)
    slack.refuse_update(CHANNEL, old.ts, "message_not_found")
    with transaction(engine) as session:
        transition(session, 1, State.PREPARING, actor="w1")
        transition(session, 1, State.RUNNING, actor="w1")
    wait_for(lambda: _task(engine, 1).thread_ts != old.ts, 10, "the task re-bound")
    with transaction(engine) as session:
        transition(session, 1, State.NEEDS_INPUT, actor="w1", reason="which branch?")
    wait_for(lambda: _settled(engine), 10, "the outbox to drain")
    task = _task(engine, 1)
    assert task.card_ts is None  # the fresh card is the root of the new thread
    assert "Task 1 (needs_input)" in slack.message(CHANNEL, str(task.thread_ts)).text
    started, asked = _milestones(engine, 1)
    said = [m.text for m in _replies(slack, task)]
    assert "message_not_found" in said[0] and "continue here" in said[0]
    assert said[1:] == [asked] and "which branch?" in asked
    assert [m.text for m in _replies(slack, task, old.ts)] == [started]


def test_milestones_are_never_coalesced_and_go_out_one_after_another(engine: Engine) -> None:
    with transaction(engine) as session:
        task = create_task(session, repo="api", prompt="fix", requester="U1", channel="C1")
        other = create_task(session, repo="api", prompt="x", requester="U1", channel="C1")
        for to in (State.PREPARING, State.RUNNING, State.NEEDS_INPUT):
            transition(session, 1, to, actor="w1")
            notify(session, task, "card", {})
    with transaction(engine) as session:
        claimed = outbox.claim_due(session, lease_s=30)
    kinds = [(r.task_id, r.kind) for r in claimed]
    # Task 1: its first milestone only, and its newest card row; task 2 is not held back.
    assert kinds == [(2, "card"), (1, "state"), (1, "card")]
    with transaction(engine) as session:
        pending = outbox.pending(session)
        assert [r.kind for r in pending if r.task_id == 1].count("state") == 3
        outbox.mark_delivered(session, claimed[1].id or 0)
    with transaction(engine) as session:
        (second,) = [r for r in outbox.claim_due(session, lease_s=30) if r.kind == "state"]
    assert second.payload["to"] == "running"
    assert task.id == 1 and other.id == 2
