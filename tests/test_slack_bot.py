"""The Slack bot end to end against the local Slack emulator: real HTTP with Slack's
signatures, a real Socket Mode websocket, the notifier draining the outbox."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slack_bolt import App
from sqlalchemy import Engine
from sqlmodel import select

from bot.slack import blocks
from bot.slack.app import SlackEnv, build_app, notifier_client
from bot.slack.handle import is_task_thread, thread_context
from bot.slack.notifier import Notifier
from bot.slack.run import http_mode
from executor.config.schema import Config, RepoConfig
from storage import outbox
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Nudge, TaskEvent
from storage.queue import claim_next
from storage.tasks import create_task, get_task, take_nudges, transition
from tests.claiming import claim
from tests.digest_fixtures import all_tasks as tasks
from tests.slack_emulator import (
    SlackEmulator,
    block_action,
    slash_command,
    view_submission,
)
from tests.slack_fixtures import FAST, card_of, slack_env, to_awaiting_approval
from tests.waiting import wait_for

REQUESTER, STRANGER, APPROVER = "U111", "U222", "U999"
ROOT = Path(__file__).parent.parent


@pytest.fixture
def app(engine: Engine, env: SlackEnv, tmp_path: Path) -> App:
    config = Config(
        repos={"api": RepoConfig(path=tmp_path, approvers=[APPROVER])}, channels={"C111": "api"}
    )
    return build_app(engine, lambda: config, env)


def test_a_signed_slash_command_creates_a_task_and_the_notifier_posts_its_card(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    answer = slack.post_to_app(url, slash_command("add fix the tests", user_id=REQUESTER))
    assert answer.status == 200 and "queued task 1 on api" in answer.text
    (task,) = tasks(engine)
    assert (task.channel, task.requester, task.source) == ("C111", REQUESTER, "slack")
    card = card_of(slack, engine)
    assert "fix the tests" in card.all_text and card.action_ids == [blocks.NUDGE, blocks.CANCEL]
    assert slack.calls()[0].method == "auth.test"  # nothing but the card reached the Web API
    assert [c.method for c in slack.calls()[1:]] == ["chat.postMessage"]


def test_forged_stale_and_malformed_requests_write_nothing(
    slack: SlackEmulator, engine: Engine, url: str
) -> None:
    command = slash_command("add fix the tests")
    assert slack.post_to_app(url, command, forge=True).status == 401
    assert slack.post_to_app(url, command, stale=True).status == 401
    broken = slack.post_to_app(url, body="{not json", content_type="application/json")
    assert broken.status == 400
    assert slack.post_to_app(url, slash_command("add")).text.startswith(":warning:")
    assert slack.post_to_app(url, slash_command("lst")).text.count("unknown subcommand") == 1
    assert tasks(engine) == []


def test_socket_mode_acks_at_once_and_the_card_follows(
    slack: SlackEmulator, engine: Engine, socket: None, notifier: Notifier
) -> None:
    envelope = slack.send_envelope("slash_commands", slash_command("fix the login page"))
    assert envelope.ack is not None and "queued task 1" in envelope.ack.payload["text"]
    assert envelope.ack_latency is not None and envelope.ack_latency < 3.0  # Slack's deadline
    assert "fix the login page" in card_of(slack, engine).all_text


def test_a_thread_reply_becomes_a_nudge_once_and_gets_eyes(
    slack: SlackEmulator, engine: Engine, socket: None, notifier: Notifier
) -> None:
    slack.send_envelope("slash_commands", slash_command("fix the tests"))
    card = card_of(slack, engine)
    (event,) = slack.post_as_user("C111", APPROVER, "use pathlib please", thread_ts=card.ts)
    slack.send_envelope("events_api", event)
    slack.send_envelope("events_api", event, retry_attempt=1, retry_reason="timeout")
    reply_ts = event["event"]["ts"]
    slack.wait_until(lambda: slack.message("C111", reply_ts).reactions, what="the 👀")
    assert slack.message("C111", reply_ts).reactions == {"eyes": [slack.bot_user_id]}
    with transaction(engine) as session:
        (nudge,) = session.exec(select(Nudge)).all()
    assert (nudge.text, nudge.author, nudge.slack_ts) == ("use pathlib please", APPROVER, reply_ts)

    def only_the_check_mark_waits() -> bool:  # 👀 delivered; ✅ held for the agent
        with transaction(engine) as session:
            return [row.payload.get("name") for row in outbox.pending(session)] == [
                "white_check_mark"
            ]

    wait_for(only_the_check_mark_waits, 10, "the 👀 delivered and the ✅ held back")
    # A whole pass of another notifier may claim the held row, but must put it back unsent
    # (how many rows it claimed depends on the background notifier's timing: not asserted).
    Notifier(engine, notifier_client(slack_env(slack)), FAST).deliver_due()
    assert "white_check_mark" not in slack.message("C111", reply_ts).reactions
    assert only_the_check_mark_waits(), "the held ✅ was settled before the agent read the reply"
    with transaction(engine) as session:  # the agent reads it at its next turn
        take_nudges(session, 1)
    slack.wait_until(
        lambda: "white_check_mark" in slack.message("C111", reply_ts).reactions, what="the ✅"
    )
    # The bot's own messages and other threads are not nudges.
    bot_reply = dict(event, event=dict(event["event"], bot_id="B1", ts="1.000001"))
    slack.send_envelope("events_api", bot_reply)
    with transaction(engine) as session:
        assert len(session.exec(select(Nudge)).all()) == 1


def test_approve_by_the_requester_merges_and_by_another_user_is_refused(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.post_to_app(url, slash_command("fix the tests", user_id=REQUESTER))
    card_of(slack, engine)
    to_awaiting_approval(engine)
    slack.wait_until(
        lambda: blocks.APPROVE in card_of(slack, engine).action_ids, what="the card with Approve"
    )
    milestone = slack.wait_until(
        lambda: [m for m in slack.messages("C111") if "ready for review" in m.all_text],
        what="the proof pack",
    )[0]
    assert "pytest" in milestone.all_text and "small and tested" in milestone.all_text
    message = card_of(slack, engine).to_api()
    refused = slack.post_to_app(url, block_action(blocks.APPROVE, user=STRANGER, message=message))
    assert refused.status == 200
    response = slack.wait_until(slack.responses, what="the refusal")[-1]
    assert response.ephemeral and "only the requester or an approver" in response.all_text
    assert tasks(engine)[0].state is State.AWAITING_APPROVAL
    slack.post_to_app(url, block_action(blocks.APPROVE, user=REQUESTER, message=message))
    slack.wait_until(lambda: len(slack.responses()) == 2, what="the approval reply")
    assert tasks(engine)[0].state is State.MERGING and tasks(engine)[0].approved_by == REQUESTER
    slack.wait_until(lambda: "merging" in card_of(slack, engine).all_text, what="card: merging")


def test_request_changes_opens_a_modal_whose_submission_starts_a_revision(
    slack: SlackEmulator, engine: Engine, socket: None, notifier: Notifier
) -> None:
    slack.send_envelope("slash_commands", slash_command("fix the tests"))
    card_of(slack, engine)
    to_awaiting_approval(engine)
    slack.wait_until(lambda: blocks.CHANGES in card_of(slack, engine).action_ids, what="card")
    click = block_action(blocks.CHANGES, message=card_of(slack, engine).to_api())
    slack.send_envelope("interactive", click)
    (view,) = slack.wait_until(slack.opened_views, what="the modal")
    values = {blocks.NOTE_BLOCK: {blocks.NOTE_INPUT: "also cover the edge case"}}
    slack.send_envelope("interactive", view_submission(values=values, user=APPROVER, view=view))
    with transaction(engine) as session:
        task = get_task(session, 1)
        (nudge,) = session.exec(select(Nudge)).all()
    assert task.state is State.QUEUED and nudge.text == "also cover the edge case"


def test_429_and_500_still_deliver_every_message_once(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.fail("chat.postMessage", status=429, retry_after=1)
    slack.fail("chat.postMessage", status=500)
    slack.post_to_app(url, slash_command("fix the tests"))
    claim(engine, running=True)
    card = card_of(slack, engine)
    slack.wait_until(lambda: len(slack.thread("C111", card.ts)) == 2, what="the milestone")
    assert [m.text for m in slack.messages("C111")][1:] == [":gear: Task 1 started working"]
    statuses = [c.status for c in slack.calls("chat.postMessage")]
    assert statuses == [429, 500, 200, 200]


def test_a_notifier_killed_mid_delivery_and_restarted_posts_nothing_twice(
    slack: SlackEmulator, engine: Engine, env: SlackEnv, url: str
) -> None:
    for i in range(3):
        slack.post_to_app(url, slash_command(f"task number {i}"))
    first = Notifier(engine, notifier_client(env), FAST)
    dead_lease = 3.0  # long enough for a busy machine to do what follows within it
    with transaction(engine) as session:  # first claims task 1's card, then "dies"
        assert len(outbox.claim_due(session, lease_s=dead_lease, limit=1)) == 1
    died = time.monotonic()
    first.deliver_due()  # delivers the two others it can still claim
    assert len(slack.messages("C111")) == 2
    second = Notifier(engine, notifier_client(env), FAST)
    assert second.deliver_due() == 0  # task 1's lease still holds
    wait_for(lambda: second.deliver_due() == 1, dead_lease + 10, "task 1's lease to run out")
    assert time.monotonic() >= died + dead_lease - 0.5  # not before it ran out
    assert sorted(m.text for m in slack.messages("C111")) == [
        f"Task {i + 1} (queued): task number {i}" for i in range(3)
    ]
    assert second.deliver_due() == 0 and first.deliver_due() == 0


def test_a_permanent_error_is_recorded_and_not_retried(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.channel_error("C404")
    slack.post_to_app(url, slash_command("--repo api fix", channel_id="C404"))

    def logged() -> list[TaskEvent]:
        with transaction(engine) as session:
            return list(session.exec(select(TaskEvent).where(TaskEvent.kind == "slack_error")))

    (event,) = slack.wait_until(logged, what="the slack_error event")
    assert event.payload["error"] == "channel_not_found"

    def settled() -> bool:  # given up on: no notifier will try it again
        with transaction(engine) as session:
            return not outbox.pending(session)

    wait_for(settled, 10, "the card's outbox row to be settled")
    assert len(slack.calls("chat.postMessage")) == 1


def test_a_mention_starts_a_task_and_the_home_tab_lists_it(
    slack: SlackEmulator, engine: Engine, socket: None, notifier: Notifier
) -> None:
    events = slack.post_as_user("C111", REQUESTER, f"<@{slack.bot_user_id}> bump the deps")
    (mention,) = [e for e in events if e["event"]["type"] == "app_mention"]
    slack.send_envelope("events_api", mention)
    ephemeral = slack.wait_until(lambda: slack.ephemerals(REQUESTER), what="the reply")[0]
    assert "queued task 1" in ephemeral.all_text
    assert "bump the deps" in card_of(slack, engine).all_text
    opened = {
        "type": "event_callback",
        "event": {"type": "app_home_opened", "user": REQUESTER, "tab": "home"},
    }
    slack.send_envelope("events_api", dict(mention, event=opened["event"]))
    home = slack.wait_until(lambda: slack.home(REQUESTER), what="the home tab")
    assert "bump the deps" in str(home["blocks"])


def test_refusals_are_ephemeral_and_change_nothing(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.post_to_app(url, slash_command("fix the tests", user_id=REQUESTER))
    card = card_of(slack, engine)
    cancel = slack.post_to_app(url, slash_command("cancel 1", user_id=STRANGER))
    assert "only the requester or an approver" in cancel.text
    assert "unknown repo 'web'" in slack.post_to_app(url, slash_command("--repo web fix")).text
    assert "not a task id" in slack.post_to_app(url, slash_command("show 1x")).text
    forged = block_action(blocks.CANCEL, "DROP TABLE", user=REQUESTER, message_ts=card.ts)
    assert slack.post_to_app(url, forged).status == 200
    slack.wait_until(slack.responses, what="the refusal of a bad button value")
    assert "not a task id" in slack.responses()[-1].all_text
    assert [(t.id, t.state) for t in tasks(engine)] == [(1, State.QUEUED)]
    by_approver = slack.post_to_app(url, slash_command("cancel 1", user_id=APPROVER))
    assert "cancelled task 1" in by_approver.text


def test_a_reply_on_a_closed_task_gets_a_hint_and_a_redelivered_event_counts_once(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.post_to_app(url, slash_command("fix the tests", user_id=REQUESTER))
    card = card_of(slack, engine)
    (first,) = slack.post_as_user("C111", APPROVER, "try again", thread_ts=card.ts)
    assert slack.post_to_app(url, first).status == 200
    assert slack.post_to_app(url, first, retry_num=1).status == 200
    slack.post_to_app(url, slash_command("cancel 1", user_id=REQUESTER))
    (late,) = slack.post_as_user("C111", APPROVER, "one more thing", thread_ts=card.ts)
    slack.post_to_app(url, late)
    hint = slack.wait_until(lambda: slack.ephemerals(APPROVER), what="the hint")[0]
    assert "cancelled" in hint.all_text and "/agent add" in hint.all_text
    with transaction(engine) as session:
        assert [n.text for n in session.exec(select(Nudge)).all()] == ["try again"]


def test_only_configured_users_may_add(
    slack: SlackEmulator, engine: Engine, env: SlackEnv, tmp_path: Path
) -> None:
    config = Config(repos={"api": RepoConfig(path=tmp_path)}, users=[REQUESTER])
    app = build_app(engine, lambda: config, env)
    with http_mode(app, host="127.0.0.1", port=0) as url:
        refused = slack.post_to_app(url, slash_command("fix it", user_id=STRANGER))
        assert "not one of the users who may add tasks" in refused.text
        assert "queued task 1" in slack.post_to_app(url, slash_command("fix it")).text
    assert [t.requester for t in tasks(engine)] == [REQUESTER]


def test_a_redelivered_mention_adds_one_task(
    slack: SlackEmulator, engine: Engine, url: str
) -> None:
    events = slack.post_as_user("C111", REQUESTER, f"<@{slack.bot_user_id}> bump the deps")
    (mention,) = [e for e in events if e["event"]["type"] == "app_mention"]
    assert slack.post_to_app(url, mention).status == 200
    assert slack.post_to_app(url, mention, retry_num=1, retry_reason="http_timeout").status == 200
    slack.wait_until(lambda: slack.ephemerals(REQUESTER), what="the reply")
    # A later mention's reply is the sign the redelivery was dealt with before it.
    (later,) = [
        e
        for e in slack.post_as_user("C111", REQUESTER, f"<@{slack.bot_user_id}> help")
        if e["event"]["type"] == "app_mention"
    ]
    assert slack.post_to_app(url, later).status == 200
    slack.wait_until(lambda: len(slack.ephemerals(REQUESTER)) == 2, what="the help reply")
    assert [t.prompt for t in tasks(engine)] == ["bump the deps"]
    first, second = slack.ephemerals(REQUESTER)
    assert "queued task 1" in first.all_text and "/agent add" in second.all_text


def test_a_mention_in_a_thread_takes_the_threads_messages_as_context(
    slack: SlackEmulator, engine: Engine, socket: None, notifier: Notifier
) -> None:
    root = slack.post_as_user("C111", APPROVER, "payments test flakes on Mondays")
    root_ts = root[0]["event"]["ts"]
    slack.post_as_user("C111", STRANGER, "timezone bug in the fixture?", thread_ts=root_ts)
    events = slack.post_as_user(
        "C111", REQUESTER, f"<@{slack.bot_user_id}> fix this", thread_ts=root_ts
    )
    (mention,) = [e for e in events if e["event"]["type"] == "app_mention"]
    envelope = slack.send_envelope("events_api", mention)
    assert envelope.ack is not None  # acked before the thread is read
    ephemeral = slack.wait_until(lambda: slack.ephemerals(REQUESTER), what="the reply")[0]
    assert "queued task 1" in ephemeral.all_text
    with transaction(engine) as session:
        prompt = get_task(session, 1).prompt
    assert prompt.startswith("fix this\n\nContext: the Slack thread this was asked in:")
    assert f"<@{APPROVER}>: payments test flakes on Mondays" in prompt
    assert f"<@{STRANGER}>: timezone bug in the fixture?" in prompt
    assert "fix this" not in prompt.split("Context:")[1]  # the mention itself is the ask


def _notifier_process(engine: Engine, slack: SlackEmulator) -> subprocess.Popen[str]:
    url = engine.url.render_as_string(hide_password=False)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.notifier_process", url, slack.api_url, slack.bot_token],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_mid_post(slack: SlackEmulator, engine: Engine, posts_before: int) -> None:
    """Start a notifier process; once Slack has taken its next post (and holds the answer),
    SIGKILL it: the post is in the channel, and the database does not know."""
    release = slack.hold("chat.postMessage")
    proc = _notifier_process(engine, slack)
    try:
        slack.wait_until(
            lambda: len(slack.calls("chat.postMessage")) > posts_before or proc.poll() is not None,
            timeout=60,
            what="the notifier's post",
        )
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        release.set()


def test_a_notifier_killed_after_slack_took_its_post_and_restarted_posts_nothing_twice(
    slack: SlackEmulator, engine: Engine
) -> None:
    with transaction(engine) as session:
        create_task(
            session, repo="api", prompt="fix the tests", requester=REQUESTER, channel="C111"
        )
    _kill_mid_post(slack, engine, posts_before=0)  # the card
    assert len(slack.messages("C111")) == 1
    with transaction(engine) as session:
        assert get_task(session, 1).thread_ts is None  # the post's answer never arrived
        claim_next(session, "w1")
        transition(session, 1, State.RUNNING, actor="w1")
    _kill_mid_post(slack, engine, posts_before=1)  # a milestone in the card's thread

    restarted = _notifier_process(engine, slack)
    try:

        def settled() -> bool:
            with transaction(engine) as session:
                return not outbox.pending(session)

        slack.wait_until(settled, timeout=60, what="every outbox row settled")
    finally:
        restarted.terminate()
        restarted.wait(10)
    (card,) = [m for m in slack.messages("C111") if not m.is_reply]
    with transaction(engine) as session:
        assert get_task(session, 1).thread_ts == card.ts  # the earlier post, adopted
    replies = [m.text for m in slack.thread("C111", card.ts) if m.is_reply]
    assert replies == [":gear: Task 1 started working"]
    assert len(slack.calls("chat.postMessage")) == 2  # the card and the milestone, no resend
    assert slack.calls("conversations.history") and slack.calls("conversations.replies")
    assert "fix the tests" in card.all_text and "running" in card.all_text  # edited to now


@pytest.mark.parametrize("error", ["internal_error", "fatal_error"])
def test_a_post_that_slack_did_despite_an_internal_error_is_not_posted_again(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier, error: str
) -> None:
    """Slack: with internal_error and fatal_error "some aspect of the operation" may have
    succeeded, so the retry looks before it posts."""
    slack.fail("chat.postMessage", error=error, applied=True)  # posted, yet answered an error
    slack.post_to_app(url, slash_command("fix the tests"))
    card = card_of(slack, engine)
    assert [m.ts for m in slack.messages("C111")] == [card.ts]
    assert len(slack.calls("chat.postMessage")) == 1
    assert slack.calls("conversations.history")


def test_a_post_whose_lookup_is_refused_is_posted_rather_than_lost(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    """The first post's answer is lost before it took effect, and looking for it is refused
    (missing_scope, say): the card is posted anyway, once, and the thread goes on."""
    slack.fail("chat.postMessage", drop=True)  # the line drops before Slack took it
    slack.fail("conversations.history", error="missing_scope")
    slack.post_to_app(url, slash_command("fix the tests"))
    card = card_of(slack, engine)
    assert [m.ts for m in slack.messages("C111")] == [card.ts]
    assert len(slack.calls("conversations.history")) == 1


def test_a_post_whose_answer_was_lost_is_found_in_slack_not_posted_again(
    slack: SlackEmulator, engine: Engine, url: str, notifier: Notifier
) -> None:
    slack.fail("chat.postMessage", drop=True, applied=True)  # posted, then the line drops
    slack.post_to_app(url, slash_command("fix the tests"))
    card = card_of(slack, engine)
    assert [m.ts for m in slack.messages("C111")] == [card.ts]
    assert [c.status for c in slack.calls("chat.postMessage")] == [0]
    (lookup,) = slack.calls("conversations.history")
    assert lookup.params["include_all_metadata"] in (True, "true", "1")


# Which thread is a task's, and what of a thread becomes a new task's context: the database
# side of the two paths above, edge by edge.


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
    exact = thread_context(messages[:1], before_ts="2.0", limit=len("<@U1>: message 0"))
    assert exact.endswith("\n<@U1>: message 0")  # exactly at the limit: nothing cut
    full = thread_context(messages, before_ts="2.0")  # the default limit holds all ten
    assert "<@U1>: message 0\n" in full and full.endswith("<@U1>: message 9")
    assert thread_context(messages, before_ts="1.000000") == ""
    assert thread_context([], before_ts="2.0") == ""
