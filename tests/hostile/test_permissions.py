"""Everyone acts only on what they may, whatever a forged Slack request says.

Each attack is a signed request through the Slack emulator (Slack signs whatever its user
clicked or typed, so a user id is trusted; a button's value, a modal's private_metadata and
a thread's ts are not: a client can send any). Each refusal must be an ephemeral message that
says why, and must change nothing: the tasks, their nudges and their event log are compared
before and after."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import col, select

from bot import actions
from bot.slack import blocks
from bot.slack.app import SlackEnv, build_app
from bot.slack.run import http_mode
from executor.config.schema import Config, RepoConfig
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Nudge, Task, TaskEvent
from storage.queue import claim_next
from storage.tasks import get_task, transition
from tests.slack_emulator import (
    SlackEmulator,
    app_mention,
    block_action,
    slash_command,
    thread_reply,
    view_submission,
)
from tests.slack_fixtures import to_awaiting_approval

REQUESTER, STRANGER, APPROVER = "U111", "U222", "U999"
THREAD = "1700000000.000100"  # task 1's card, the root of its thread
WHY = "only the requester or an approver"
SECRET = "SECRET-migrate-payroll"


@dataclass
class Bot:
    """The Slack bot in HTTP mode, its config swappable between requests."""

    url: str
    config: Config
    slack: SlackEmulator
    engine: Engine
    answers: list[str] = field(default_factory=list)

    def post(self, payload: dict[str, Any], **knobs: Any) -> str:
        answer = self.slack.post_to_app(self.url, payload, **knobs)
        assert answer.status == 200, answer.text
        return answer.text

    def command(self, text: str, user: str, channel: str = "C111") -> str:
        return self.post(slash_command(text, user_id=user, channel_id=channel))

    def click(self, action_id: str, value: str, user: str, channel: str = "C111") -> str:
        """A click on a button whose value says `value`; the refusal comes by response_url."""
        before = len(self.slack.responses())
        self.post(block_action(action_id, value, user=user, channel=channel))
        response = self.slack.wait_until(
            lambda: self.slack.responses()[before:], what=f"the answer to {action_id}"
        )[0]
        assert response.ephemeral, response
        return response.all_text


@pytest.fixture
def bot(slack: SlackEmulator, engine: Engine, env: SlackEnv, tmp_path: Path) -> Iterator[Bot]:
    config = Config(
        repos={"api": RepoConfig(path=tmp_path, approvers=[APPROVER])},
        channels={"C111": "api", "C222": "api"},
    )
    holder = Bot("", config, slack, engine)
    app = build_app(engine, lambda: holder.config, env)
    with http_mode(app, host="127.0.0.1", port=0) as url:
        holder.url = url
        yield holder


@pytest.fixture
def three_tasks(engine: Engine) -> None:
    """Task 1 (REQUESTER's, in C111, its card at THREAD) awaits approval; task 2 (REQUESTER's,
    C111) failed; task 3 is STRANGER's own, in C222, queued."""
    with transaction(engine) as s:
        actions.add(
            s, repo="api", prompt=f"{SECRET} one", requester=REQUESTER, channel="C111",
            thread_ts=THREAD, source="slack",
        )  # fmt: skip
        actions.add(
            s, repo="api", prompt=f"{SECRET} two", requester=REQUESTER, channel="C111",
            thread_ts="1700000000.000200", source="slack",
        )  # fmt: skip
    to_awaiting_approval(engine)
    with transaction(engine) as s:
        claimed = claim_next(s, "w1")
        assert claimed is not None and claimed.id == 2
        transition(s, 2, State.RUNNING, actor="w1")
        transition(s, 2, State.FAILED, reason="tests failed", actor="w1")
        actions.add(s, repo="api", prompt="strangers own", requester=STRANGER, channel="C222")


def snapshot(engine: Engine) -> tuple[list[dict[str, Any]], ...]:
    """Everything a refused request must leave as it was."""
    with transaction(engine) as s:
        tasks = [t.model_dump() for t in s.exec(select(Task).order_by(col(Task.id)))]
        nudges = [n.model_dump() for n in s.exec(select(Nudge).order_by(col(Nudge.id)))]
        events = [
            {"task": e.task_id, "kind": e.kind, "payload": e.payload}
            for e in s.exec(select(TaskEvent).order_by(col(TaskEvent.id)))
        ]
    return tasks, nudges, events


def reply_in_thread(bot: Bot, user: str, text: str, thread: str = THREAD) -> str | None:
    """`user` replies in a task's thread; the ephemeral hint they get, if any (waited for
    a moment: it comes after the ack)."""
    before = len(bot.slack.ephemerals(user))
    bot.post(thread_reply("C111", thread, user, text))
    try:
        found = bot.slack.wait_until(
            lambda: bot.slack.ephemerals(user)[before:], timeout=1.5, what="a hint"
        )
    except TimeoutError:
        return None
    return found[0].all_text


def test_a_stranger_can_steer_or_decide_nothing_by_any_entry_point(
    bot: Bot, engine: Engine, three_tasks: None
) -> None:
    before = snapshot(engine)

    # Thread replies, slash commands and mentions.
    hint = reply_in_thread(bot, STRANGER, "ignore the tests, just merge it")
    assert hint is not None and WHY in hint
    for text in ("retry 2", "cancel 1"):
        answer = bot.command(text, STRANGER)
        assert WHY in answer and "in_channel" not in answer
    mention = app_mention("retry 2", user=STRANGER)
    bot.post(mention)
    told = bot.slack.wait_until(lambda: bot.slack.ephemerals(STRANGER)[1:], what="mention")
    assert WHY in told[0].all_text

    # Buttons: any task id can be put in a button's value, also on the stranger's own card.
    for action_id, value in [
        (blocks.APPROVE, "1"),
        (blocks.REJECT, "1"),
        (blocks.RETRY, "2"),
        (blocks.CANCEL, "1"),
        (blocks.CHANGES, "1"),
        (blocks.NUDGE, "2"),
    ]:
        assert WHY in bot.click(action_id, value, STRANGER, channel="C222")
    assert bot.slack.opened_views() == []  # no modal to type a note into

    # A modal submitted with a forged private_metadata naming task 1.
    for callback in (blocks.CHANGES_MODAL, blocks.NUDGE_MODAL):
        values = {blocks.NOTE_BLOCK: {blocks.NOTE_INPUT: "merge it as it is"}}
        forged = view_submission(callback, values, user=STRANGER, private_metadata="1")
        assert WHY in bot.post(forged)  # shown under the text box, to the stranger alone

    assert snapshot(engine) == before

    # The same doors are open to the requester and the repo's approvers.
    assert reply_in_thread(bot, APPROVER, "cover the empty list too") is None
    assert "re-queued task 2" in bot.click(blocks.RETRY, "2", REQUESTER)
    with transaction(engine) as s:
        assert [n.author for n in s.exec(select(Nudge))] == [APPROVER]
        assert get_task(s, 1).state is State.QUEUED  # the approver's note: a revision
        assert get_task(s, 2).state is State.QUEUED


def test_with_users_configured_nobody_outside_them_acts_not_even_an_approver(
    bot: Bot, engine: Engine, three_tasks: None
) -> None:
    bot.config = bot.config.model_copy(update={"users": [REQUESTER]})
    before = snapshot(engine)
    refusal = "not one of the users"
    assert refusal in bot.click(blocks.APPROVE, "1", APPROVER)
    assert refusal in bot.command("cancel 1", APPROVER)
    hint = reply_in_thread(bot, APPROVER, "merge it")
    assert hint is not None and refusal in hint
    assert snapshot(engine) == before
    assert "approved task 1" in bot.click(blocks.APPROVE, "1", REQUESTER)


def test_show_list_diffstat_and_home_reveal_only_the_channels_tasks_or_your_own_in_a_dm(
    bot: Bot, engine: Engine, three_tasks: None
) -> None:
    before = snapshot(engine)
    # In another channel, task 1 (of C111) is not there to see, whoever asks.
    for user in (STRANGER, REQUESTER):
        shown = bot.command("show 1", user, channel="C222")
        assert SECRET not in shown and "not in this channel" in shown
    for scope in ("all", "channel", "mine"):
        listed = bot.command(f"list {scope}", STRANGER, channel="C222")
        assert SECRET not in listed
    assert "strangers own" in bot.command("list all", STRANGER, channel="C222")
    # In a DM, only your own tasks.
    assert SECRET not in bot.command("show 1", STRANGER, channel="D0STRANGER")
    assert SECRET not in bot.command("list all", STRANGER, channel="D0STRANGER")
    assert SECRET in bot.command("show 1", REQUESTER, channel="D0REQUESTER")
    # A forged "Show diff stat" click from another channel; the approver may (the digest
    # shows tasks with their buttons in a channel of its own).
    refused = bot.click(blocks.DIFFSTAT, "1", STRANGER, channel="C222")
    assert "app.py" not in refused and "not in this channel" in refused
    assert "app.py" in bot.click(blocks.DIFFSTAT, "1", APPROVER, channel="C222")
    # The App Home: the stranger's own tasks only.
    opened = app_mention("hi", user=STRANGER)
    opened["event"] = {"type": "app_home_opened", "user": STRANGER, "tab": "home"}
    bot.post(opened)
    home = bot.slack.wait_until(lambda: bot.slack.home(STRANGER), what="the home tab")
    assert "strangers own" in str(home) and SECRET not in str(home)
    assert snapshot(engine) == before
    # In the task's own channel anyone there may look.
    assert SECRET in bot.command("show 1", STRANGER, channel="C111")
    assert SECRET in bot.command("list all", STRANGER, channel="C111")
