"""Every `/agent` command and every button and modal, end to end: signed HTTP requests from the
Slack emulator into the real Bolt app, the notifier delivering cards to the emulator. Each test
asserts what the person sees (the reply, the card) and what changed in the task (state,
nudges, events), so a handler that does nothing, or the wrong thing, fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from bot.slack import blocks
from bot.slack.notifier import Notifier
from executor.config.schema import Budgets, Config, RepoConfig
from storage import digests
from storage.db import transaction
from storage.lifecycle import State
from storage.models import DigestSubscriber, Nudge, Priority, Schedule, Task
from storage.spend import charge
from storage.tasks import create_task, events, get_task, record, transition
from tests.digest_fixtures import all_tasks
from tests.slack_emulator import (
    AppResponse,
    Message,
    ResponsePost,
    SlackEmulator,
    block_action,
    slash_command,
    view_submission,
)
from tests.slack_fixtures import serve_http

REQUESTER, STRANGER, APPROVER = "U111", "U222", "U999"
API, WEB = "C111", "C222"  # channels whose default repos are api and web
PROOF = {
    "diff_stat": " app.py | 2 +-\n 1 file changed",
    "files": ["app.py"],
    "insertions": 1,
    "deletions": 1,
    "checks": [{"command": "pytest", "passed": True}],
    "review": {"verdict": "approve", "summary": "small and tested"},
}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "repos": {
                "api": RepoConfig(path=tmp_path, approvers=[APPROVER]),
                "web": RepoConfig(path=tmp_path, base_branch="develop"),
            },
            "channels": {API: "api", WEB: "web"},
            "budgets": {"daily_usd": 2, "repo_daily_usd": {"api": 0.5}},
            "digest": {"cron": "0 8 * * *", "timezone": "UTC", "channels": ["C900"]},
        }
    )


def _seen(answer: AppResponse) -> str:
    """What the person sees of an ack: its text and the text of its blocks."""
    assert answer.status == 200, answer.text
    if not answer.text.startswith("{"):  # Bolt answers a text-only ack as plain text
        return answer.text
    return ResponsePost(url="", body=answer.json(), at=0).all_text


@dataclass
class Bot:
    slack: SlackEmulator
    engine: Engine
    url: str

    def command(self, text: str, user: str = REQUESTER, channel: str = API) -> str:
        command = slash_command(text, user_id=user, channel_id=channel)
        return _seen(self.slack.post_to_app(self.url, command))

    def add(self, prompt: str, user: str = REQUESTER, channel: str = API) -> int:
        said = self.command(f"add {prompt}", user, channel)
        found = re.search(r"queued task (\d+)", said)
        assert found, said
        return int(found.group(1))

    def task(self, task_id: int) -> Task:
        with transaction(self.engine) as s:
            return get_task(s, task_id)

    def events(self, task_id: int, kind: str = "state") -> list[dict]:
        with transaction(self.engine) as s:
            return [e.payload for e in events(s, task_id) if e.kind == kind]

    def nudges(self, task_id: int) -> list[Nudge]:
        with transaction(self.engine) as s:
            return list(s.exec(select(Nudge).where(Nudge.task_id == task_id)).all())

    def move(self, task_id: int, *states: State, **fields: object) -> None:
        """What an executor would do: move the task through `states` (a worker holds it in
        the working ones); awaiting_approval comes with a proof pack and a summary."""
        with transaction(self.engine) as s:
            for state in states:
                extra: dict[str, object] = {"worker_id": "w1"} if state is State.PREPARING else {}
                if state is State.AWAITING_APPROVAL:
                    record(s, task_id, "proof", PROOF)
                    extra["summary"] = "fixed it"
                transition(s, task_id, state, reason=f"to {state}", actor="w1", **extra)
            if fields:
                task = get_task(s, task_id)
                for name, value in fields.items():
                    setattr(task, name, value)
                s.add(task)

    def card(self, task_id: int, showing: str = "") -> Message:
        """The task's card as it stands in its channel once it shows `showing` (text or an
        action id): the notifier posts and edits it after each change."""

        def current() -> Message | None:
            task = self.task(task_id)
            if task.thread_ts is None or task.channel is None:
                return None
            card = self.slack.message(task.channel, task.thread_ts)
            return card if showing in card.all_text or showing in card.action_ids else None

        return self.slack.wait_until(current, timeout=10, what=f"card {task_id} with {showing!r}")

    def click(self, action_id: str, task_id: int, user: str = REQUESTER) -> str:
        """Press the button `action_id` on the task's card, as Slack sends it; returns the
        ephemeral reply the person sees."""
        card = self.card(task_id, showing=action_id)
        before = len(self.slack.responses())
        click = block_action(action_id, user=user, channel=card.channel, message=card.to_api())
        assert self.slack.post_to_app(self.url, click).status == 200
        self.slack.wait_until(lambda: len(self.slack.responses()) > before, what="the reply")
        response = self.slack.responses()[-1]
        assert response.ephemeral  # only the person who clicked sees it
        assert not response.body.get("replace_original")  # and the card stays as it was
        return response.all_text

    def open_modal(self, action_id: str, task_id: int, user: str = REQUESTER) -> dict:
        card = self.card(task_id, showing=action_id)
        before = len(self.slack.opened_views())
        click = block_action(action_id, user=user, channel=card.channel, message=card.to_api())
        assert self.slack.post_to_app(self.url, click).status == 200
        self.slack.wait_until(lambda: len(self.slack.opened_views()) > before, what="the modal")
        return self.slack.opened_views()[-1]

    def submit(self, view: dict, text: str, user: str = REQUESTER) -> AppResponse:
        values = {blocks.NOTE_BLOCK: {blocks.NOTE_INPUT: text}}
        answer = self.slack.post_to_app(
            self.url, view_submission(values=values, user=user, view=view)
        )
        assert answer.status == 200, answer.text
        return answer


@pytest.fixture
def bot(slack: SlackEmulator, engine: Engine, config: Config) -> Iterator[Bot]:
    """The app over signed HTTP; the tests that look at cards also take the `notifier`."""
    with serve_http(engine, slack, config) as url:
        yield Bot(slack, engine, url)


# --- commands ---------------------------------------------------------------------------


def test_add_queues_a_task_on_the_channels_repo_or_the_named_one_and_posts_its_card(
    bot: Bot,
    notifier: Notifier,
) -> None:
    said = bot.command("add fix the login page")
    assert said == "queued task 1 on api (branch nightcrew/1-fix-the-login-page)"
    assert "queued task 2 on api" in bot.command("tidy the docs <!channel>")  # add is implied
    named = bot.command("add --repo web --priority high bump the deps", channel=API)
    assert "queued task 3 on web" in named
    one, three = bot.task(1), bot.task(3)
    assert (one.repo, one.requester, one.channel, one.source) == ("api", REQUESTER, API, "slack")
    assert (three.repo, three.priority) == ("web", Priority.HIGH)
    assert one.state is State.QUEUED and bot.events(1, "created")
    card = bot.card(1)
    assert "fix the login page" in card.all_text and "queued" in card.all_text
    assert card.action_ids == [blocks.NUDGE, blocks.CANCEL]
    assert "&lt;!channel&gt;" in bot.card(2).all_text  # people's text cannot ping a channel
    assert bot.command("add --repo nope fix it").startswith(":warning: unknown repo 'nope'")
    assert bot.command("add").startswith(":warning:")
    assert [t.id for t in all_tasks(bot.engine)] == [1, 2, 3]  # refusals wrote nothing


def test_list_shows_this_channels_tasks_yours_or_all(bot: Bot) -> None:
    bot.add("mine here", REQUESTER, API)
    bot.add("theirs here", STRANGER, API)
    bot.add("mine elsewhere", REQUESTER, WEB)

    def listed(text: str, user: str = REQUESTER) -> set[str]:
        seen = bot.command(text, user, API)
        return {p for p in ("mine here", "theirs here", "mine elsewhere") if p in seen}

    # In a channel every scope shows that channel's tasks only (SECURITY.md): `mine` narrows
    # them to yours; everything of yours is listed in a DM with the bot.
    assert listed("list") == {"mine here", "theirs here"}
    assert listed("list channel") == {"mine here", "theirs here"}
    assert listed("list all") == {"mine here", "theirs here"}
    assert listed("list mine") == {"mine here"}
    assert listed("list mine", STRANGER) == {"theirs here"}
    in_dm = bot.command("list all", REQUESTER, "D111")
    assert {p for p in ("mine here", "theirs here", "mine elsewhere") if p in in_dm} == {
        "mine here",
        "mine elsewhere",
    }
    assert bot.command("list").startswith("tasks\n*Tasks in this channel*")
    assert bot.command("list mine").startswith("tasks\n*Your tasks in this channel*")
    assert bot.command("list all").startswith("tasks\n*All tasks in this channel*")
    assert "Tasks in this channel: none" in bot.command("list", channel="C333")
    assert "*3* `queued` `web` mine elsewhere" in in_dm
    assert "takes mine, channel or all" in bot.command("list everything")


def test_list_shows_the_newest_tasks_that_fit_in_one_message(bot: Bot) -> None:
    with transaction(bot.engine) as s:
        for i in range(1, 51):
            create_task(s, repo="api", prompt=f"job {i}", requester=REQUESTER, channel=API)
    lines = bot.command("list all").splitlines()[2:]  # after the fallback text and heading
    shown = [int(line.split("*")[1]) for line in lines]
    assert shown == list(range(50, 2, -1))  # newest first, 48 of them: Slack's 50 blocks


def test_show_renders_the_tasks_card(bot: Bot) -> None:
    task_id = bot.add("fix the flaky test")
    bot.move(task_id, State.PREPARING, State.RUNNING)
    shown = bot.command(f"show {task_id}")
    assert f"Task {task_id}" in shown and "running" in shown and "fix the flaky test" in shown
    assert "nightcrew/1-fix-the-flaky-test" in shown
    assert bot.command("show 42") == ":warning: no task 42"
    assert "not a task id" in bot.command("show 1x")


def test_repos_lists_the_repos_and_this_channels(bot: Bot) -> None:
    assert bot.command("repos", channel=API).splitlines() == [
        "• `api` (base `main`)",
        "• `web` (base `develop`)",
        "this channel's repo: `api`",
    ]
    assert bot.command("repos", channel=WEB).splitlines()[-1] == "this channel's repo: `web`"
    assert bot.command("repos", channel="C333").splitlines() == [
        "• `api` (base `main`)",
        "• `web` (base `develop`)",
    ]


def test_retry_requeues_a_failed_task_and_refuses_a_queued_one(
    bot: Bot, notifier: Notifier
) -> None:
    task_id = bot.add("fix the tests")
    refused = bot.command(f"retry {task_id}")
    assert refused.startswith(":warning:") and "only failed, cancelled or needs-input" in refused
    bot.move(task_id, State.PREPARING, State.RUNNING, State.FAILED, attempts=3)
    bot.card(task_id, showing="failed")
    refused = bot.command(f"retry {task_id}", user=STRANGER)  # only requester and approvers
    assert refused.startswith(":warning:") and bot.task(task_id).state is State.FAILED
    assert bot.command(f"retry {task_id}", user=APPROVER) == f"re-queued task {task_id}"
    task = bot.task(task_id)
    assert (task.state, task.attempts, task.finished_at) == (State.QUEUED, 0, None)
    assert bot.events(task_id)[-1] == {
        "from": "failed",
        "to": "queued",
        "reason": f"retried by {APPROVER}",
        "by": APPROVER,
    }
    assert blocks.CANCEL in bot.card(task_id, showing="queued").action_ids


def test_cancel_stops_a_queued_task_flags_a_running_one_and_refuses_strangers(
    bot: Bot, notifier: Notifier
) -> None:
    queued, running, other = bot.add("first"), bot.add("second"), bot.add("third")
    refused = bot.command(f"cancel {queued}", user=STRANGER)
    assert "only the requester or an approver of task 1 may cancel it" in refused
    assert bot.task(queued).state is State.QUEUED
    assert bot.command(f"cancel {queued}") == f"cancelled task {queued}"
    assert bot.task(queued).state is State.CANCELLED
    assert bot.card(queued, showing="cancelled").action_ids == []
    bot.move(running, State.PREPARING, State.RUNNING)
    bot.move(other, State.PREPARING, State.RUNNING)
    said = bot.command(f"cancel {running}", user=APPROVER)  # the repo's approver may
    assert said == f"cancelling task {running}; its agent stops at the next step"
    task = bot.task(running)
    assert task.state is State.RUNNING and task.cancel_requested_by == APPROVER
    assert bot.events(running, "cancel_requested") == [{"by": APPROVER}]
    assert bot.task(other).cancel_requested_at is None  # only the task named
    assert "already requested" in bot.command(f"cancel {running}")


def test_digest_shows_the_day_and_subscribing_sets_up_the_dm(bot: Bot) -> None:
    waiting, failed = bot.add("waiting one"), bot.add("broken one")
    theirs = bot.add("their open one", user=STRANGER)
    bot.move(waiting, State.PREPARING, State.RUNNING, State.AWAITING_APPROVAL)
    bot.move(failed, State.PREPARING, State.RUNNING, State.FAILED)
    bot.move(theirs, State.PREPARING, State.RUNNING)
    with transaction(bot.engine) as s:  # the last digests went out an hour ago, not at 08:00
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        assert digests.claim_run(s, "C900", hour_ago) and digests.claim_run(s, REQUESTER, hour_ago)
    shown = bot.command("digest")
    assert "1 awaiting approval, 0 merged, 1 failed, 1 still open" in shown
    assert "waiting one" in shown and "broken one" in shown and "their open one" in shown
    mine = bot.command("digest mine")
    assert "1 awaiting approval, 0 merged, 1 failed, 0 still open" in mine
    assert "their open one" not in mine and "waiting one" in mine
    said = bot.command("digest subscribe")
    assert said == "you will get the digest of your tasks by DM at `0 8 * * *` (UTC)"
    assert bot.command("digest subscribe").startswith("you already get the digest")
    assert _subscribers(bot.engine) == [REQUESTER]
    assert bot.command("digest unsubscribe") == "you will no longer get the digest by DM"
    assert bot.command("digest unsubscribe") == "you were not getting the digest by DM"
    assert _subscribers(bot.engine) == []


def test_schedule_adds_lists_pauses_resumes_and_deletes(bot: Bot) -> None:
    added = bot.command('schedule "0 9 * * 1" --repo web update the deps')
    assert added.startswith("added schedule 1: `0 9 * * 1` (UTC) on web, next Mon")
    berlin = bot.command("schedule @daily --tz Europe/Berlin tidy <!here>", STRANGER, WEB)
    assert berlin.startswith("added schedule 2: `@daily` (Europe/Berlin) on web, next ")
    assert "tidy &lt;!here&gt;" in berlin
    listed = bot.command("schedule list").splitlines()
    assert listed[0] == "*Schedules*" and len(listed) == 3
    assert listed[1].startswith("• 1: `0 9 * * 1` (UTC) on web") and "update the deps" in listed[1]
    assert listed[2].startswith("• 2: `@daily` (Europe/Berlin)")
    assert "only the creator" in bot.command("schedule pause 1", user=STRANGER)
    assert bot.command("schedule pause 1") == "schedule 1 paused"
    assert _schedules(bot.engine) == [
        ("web", REQUESTER, API, "UTC", True),
        ("web", STRANGER, WEB, "Europe/Berlin", False),
    ]
    assert bot.command("schedule resume 1") == "schedule 1 resumed"
    assert _schedules(bot.engine)[0][-1] is False
    assert "deleted" in bot.command("schedule delete 1")
    assert "deleted" in bot.command("schedule delete 2", user=STRANGER)
    assert _schedules(bot.engine) == []
    assert bot.command("schedule list").startswith("no schedules yet")
    assert "no schedule 7" in bot.command("schedule resume 7")


def test_budget_without_budgets_says_how_to_set_one(
    slack: SlackEmulator, engine: Engine, config: Config
) -> None:
    unlimited = config.model_copy(update={"budgets": Budgets()})
    with serve_http(engine, slack, unlimited) as url:
        said = Bot(slack, engine, url).command("budget").splitlines()
    assert said[-1] == "No budgets set: add `budgets: {daily_usd: 20}` to nightcrew.yaml."


def test_only_the_configured_users_may_add_tasks_or_schedules(
    slack: SlackEmulator, engine: Engine, config: Config
) -> None:
    with serve_http(engine, slack, config.model_copy(update={"users": [REQUESTER]})) as url:
        bot = Bot(slack, engine, url)
        refused = bot.command("add fix it", user=STRANGER)
        assert refused == (
            ":warning: you are not one of the users who may add tasks; ask an admin to add "
            "your Slack id to `users:` in nightcrew.yaml"
        )
        refused = bot.command('schedule "0 9 * * 1" bump it', user=STRANGER)
        assert refused == (
            ":warning: you are not one of the users who may use nightcrew; ask an admin to add "
            "your Slack id to `users:` in nightcrew.yaml"
        )
        assert all_tasks(engine) == [] and _schedules(engine) == []
        assert "queued task 1" in bot.command("add fix it")
        assert bot.command('schedule "0 9 * * 1" bump it').startswith("added schedule 1")


def test_help_lists_every_command(bot: Bot) -> None:
    for text in ("help", ""):
        said = bot.command(text)
        for verb in ("add", "list", "show", "cancel", "retry", "repos", "budget", "digest"):
            assert f"/agent {verb}" in said, verb
        assert "/agent schedule" in said
    assert "unknown subcommand 'lst'" in bot.command("lst")


def test_budget_shows_todays_spend_against_each_budget(bot: Bot) -> None:
    before = bot.command("budget").splitlines()
    assert before[1:] == [
        "• all repos: $0.00 of $2.00 ($2.00 left)",
        "• repo api: $0.00 of $0.50 ($0.50 left)",
        "• repo web: $0.00",
    ]
    task_id = bot.add("fix the tests")
    with transaction(bot.engine) as s:
        charge(
            s,
            task_id,
            model="m",
            tokens_in=9,
            tokens_out=1,
            cost_nanos=600_000_000,
            at=datetime.now(UTC),
        )
    after = bot.command("budget").splitlines()
    assert after[1:] == [
        "• all repos: $0.60 of $2.00 ($1.40 left)",
        "• repo api: $0.60 of $0.50 — *reached*",
        "• repo web: $0.00",
    ]


# --- buttons and modals ------------------------------------------------------------------


def test_approve_merges_for_the_requester_and_is_refused_to_a_stranger(
    bot: Bot, notifier: Notifier
) -> None:
    task_id = bot.add("fix the tests")
    bot.move(task_id, State.PREPARING, State.RUNNING, State.AWAITING_APPROVAL)
    refused = bot.click(blocks.APPROVE, task_id, user=STRANGER)
    assert refused.startswith(":no_entry: only the requester or an approver")
    assert bot.task(task_id).state is State.AWAITING_APPROVAL
    said = bot.click(blocks.APPROVE, task_id)
    assert (
        said == f"approved task {task_id}; branch {bot.task(task_id).branch} merges into main next"
    )
    task = bot.task(task_id)
    assert (task.state, task.approved_by) == (State.MERGING, REQUESTER)
    assert bot.events(task_id)[-1]["by"] == REQUESTER
    assert bot.card(task_id, showing="merging").action_ids == []


def test_reject_closes_the_task(bot: Bot, notifier: Notifier) -> None:
    task_id = bot.add("fix the tests")
    bot.move(task_id, State.PREPARING, State.RUNNING, State.AWAITING_APPROVAL)
    refused = bot.click(blocks.REJECT, task_id, user=STRANGER)
    assert refused == (
        f":no_entry: only the requester or an approver of task {task_id} may reject it "
        f"(requested by {REQUESTER})"
    )
    said = bot.click(blocks.REJECT, task_id, user=APPROVER)
    assert said.startswith(f"rejected task {task_id}; its branch nightcrew/1-")
    assert bot.task(task_id).state is State.REJECTED
    assert bot.events(task_id)[-1] == {
        "from": "awaiting_approval",
        "to": "rejected",
        "reason": f"rejected by {APPROVER}",
        "by": APPROVER,
    }
    assert bot.card(task_id, showing="rejected").action_ids == []


def test_replies_in_a_tasks_thread_become_nudges_once_each_and_other_threads_are_left(
    bot: Bot, notifier: Notifier
) -> None:
    task_id = bot.add("fix the tests")
    card = bot.card(task_id)
    other = bot.slack.post_as_user(API, STRANGER, "lunch?")[0]["event"]["ts"]

    def reply(text: str, thread: str = card.ts, channel: str = API, user: str = APPROVER) -> dict:
        (event,) = bot.slack.post_as_user(channel, user, text, thread_ts=thread)
        assert bot.slack.post_to_app(bot.url, event).status == 200
        return event

    first = reply("use pathlib")
    reply("and type hints")
    assert bot.slack.post_to_app(bot.url, first, retry_num=1).status == 200  # redelivered
    reply("not for the task", thread=other)  # a thread that is no task's
    reply("wrong channel", channel=WEB)  # the card's ts, in another channel
    reply("delete the tests", user=STRANGER)  # neither requester nor approver: not steering
    assert [(n.text, n.author) for n in bot.nudges(task_id)] == [
        ("use pathlib", APPROVER),
        ("and type hints", APPROVER),
    ]
    assert {n.source for n in bot.nudges(task_id)} == {"slack"}
    assert bot.task(task_id).state is State.QUEUED  # read at the agent's next turn
    # A mention in the task's thread is a reply to the task, not a new task.
    mention = bot.slack.post_as_user(
        API, APPROVER, f"<@{bot.slack.bot_user_id}> also X", thread_ts=card.ts
    )
    for event in mention:
        assert bot.slack.post_to_app(bot.url, event).status == 200
    assert [t.id for t in all_tasks(bot.engine)] == [task_id] and len(bot.nudges(task_id)) == 3
    # On a closed task a reply gets a hint, in the thread, seen only by its writer.
    bot.command(f"cancel {task_id}")
    reply("one more thing")
    (hint,) = bot.slack.wait_until(lambda: bot.slack.ephemerals(APPROVER), what="the hint")
    assert (hint.thread_ts, hint.channel) == (card.ts, API) and "cancelled" in hint.all_text


def test_the_retry_button_requeues_a_failed_task(bot: Bot, notifier: Notifier) -> None:
    task_id = bot.add("fix the tests")
    bot.move(task_id, State.PREPARING, State.RUNNING, State.FAILED)
    assert bot.click(blocks.RETRY, task_id) == f"re-queued task {task_id}"
    assert bot.task(task_id).state is State.QUEUED
    assert bot.events(task_id)[-1]["reason"] == f"retried by {REQUESTER}"


def test_the_cancel_button_cancels(bot: Bot, notifier: Notifier) -> None:
    task_id = bot.add("fix the tests")
    assert "may cancel it" in bot.click(blocks.CANCEL, task_id, user=STRANGER)
    assert bot.click(blocks.CANCEL, task_id) == f"cancelled task {task_id}"
    assert bot.task(task_id).state is State.CANCELLED
    with transaction(bot.engine) as s:  # a task of a repo since removed from the config
        gone = create_task(s, repo="gone", prompt="old work", requester=REQUESTER, channel=API)
        assert gone.id is not None
    assert "may cancel it (requested by" in bot.click(blocks.CANCEL, gone.id, user=APPROVER)
    assert "may cancel it" in bot.command(f"cancel {gone.id}", user=APPROVER)
    assert bot.click(blocks.CANCEL, gone.id) == f"cancelled task {gone.id}"


def test_the_diff_button_shows_the_diff_stat_of_the_proof(bot: Bot, notifier: Notifier) -> None:
    task_id = bot.add("fix the tests")
    bot.move(task_id, State.PREPARING, State.RUNNING, State.AWAITING_APPROVAL)
    said = bot.click(blocks.DIFFSTAT, task_id)
    assert said == "``` app.py | 2 +-\n 1 file changed```"
    assert bot.task(task_id).state is State.AWAITING_APPROVAL  # looking changes nothing
    with transaction(bot.engine) as s:  # a revision's proof is newer: that one is shown
        record(s, task_id, "proof", PROOF | {"diff_stat": " app.py | 9 +++++----"})
    assert bot.click(blocks.DIFFSTAT, task_id) == "``` app.py | 9 +++++----```"
    other = bot.add("another task")  # its proof has no diff stat: it says so
    with transaction(bot.engine) as s:
        record(s, other, "proof", {"files": []})
    bot.move(other, State.PREPARING, State.RUNNING, State.AWAITING_APPROVAL)
    with transaction(bot.engine) as s:  # the newest proof, of this task, is the one read
        record(s, other, "proof", {"files": []})
    assert bot.click(blocks.DIFFSTAT, other) == "```no diff stat recorded```"


def test_the_home_tab_groups_the_persons_own_tasks(bot: Bot, notifier: Notifier) -> None:
    running, waiting, done = bot.add("running one"), bot.add("waiting one"), bot.add("done one")
    bot.add("their task", user=STRANGER)
    bot.move(running, State.PREPARING, State.RUNNING)
    bot.move(waiting, State.PREPARING, State.RUNNING, State.NEEDS_INPUT)
    bot.command(f"cancel {done}")
    opened = {"type": "app_home_opened", "user": REQUESTER, "tab": "home"}
    event = bot.slack.post_as_user(API, REQUESTER, "hi")[0] | {"event": opened}
    assert bot.slack.post_to_app(bot.url, event).status == 200
    home = bot.slack.wait_until(lambda: bot.slack.home(REQUESTER), what="the home tab")
    lines = [b["text"]["text"] for b in home["blocks"] if b["type"] == "section"]
    assert lines == [
        "*Running*",
        f"*{running}* `running` `api` running one",
        "*Waiting for your approval*: none",
        "*Waiting for your input*",
        f"*{waiting}* `needs_input` `api` waiting one",
        "*Recent*",
        f"*{done}* `cancelled` `api` done one",
    ]


def test_nudge_opens_a_modal_whose_note_reaches_the_agent(bot: Bot, notifier: Notifier) -> None:
    task_id = bot.add("fix the tests")
    bot.move(task_id, State.PREPARING, State.RUNNING)
    view = bot.open_modal(blocks.NUDGE, task_id)
    assert (view["callback_id"], view["private_metadata"]) == (blocks.NUDGE_MODAL, str(task_id))
    assert view["title"]["text"] == f"Nudge task {task_id}"
    refused = bot.submit(view, "use pathlib", user=STRANGER)  # the modal forwarded: refused
    assert refused.json()["response_action"] == "errors" and bot.nudges(task_id) == []
    bot.submit(view, "use pathlib", user=APPROVER)
    (nudge,) = bot.nudges(task_id)
    assert (nudge.text, nudge.author, nudge.consumed_at) == ("use pathlib", APPROVER, None)
    assert bot.task(task_id).state is State.RUNNING  # read at the agent's next turn
    refused = bot.submit(view, "   ")  # an empty note: an error under the box, nothing saved
    assert refused.json()["response_action"] == "errors" and len(bot.nudges(task_id)) == 1


def test_a_nudge_on_a_task_that_needs_input_sends_it_back_to_work(
    bot: Bot, notifier: Notifier
) -> None:
    task_id = bot.add("fix the tests")
    bot.move(task_id, State.PREPARING, State.RUNNING, State.NEEDS_INPUT)
    bot.submit(bot.open_modal(blocks.NUDGE, task_id), "the answer is 42")
    assert bot.task(task_id).state is State.QUEUED
    assert [n.text for n in bot.nudges(task_id)] == ["the answer is 42"]


def test_request_changes_opens_a_modal_whose_note_starts_a_revision(
    bot: Bot, notifier: Notifier
) -> None:
    task_id = bot.add("fix the tests")
    bot.move(task_id, State.PREPARING, State.RUNNING, State.AWAITING_APPROVAL)
    view = bot.open_modal(blocks.CHANGES, task_id)
    assert view["callback_id"] == blocks.CHANGES_MODAL
    assert view["title"]["text"] == "Request changes"
    bot.submit(view, "also cover the edge case", user=APPROVER)
    task = bot.task(task_id)
    assert task.state is State.QUEUED
    assert [(n.text, n.author) for n in bot.nudges(task_id)] == [
        ("also cover the edge case", APPROVER)
    ]
    assert bot.events(task_id)[-1]["reason"] == f"revision requested by {APPROVER}"
    assert bot.card(task_id, showing="queued").action_ids == [blocks.NUDGE, blocks.CANCEL]


def _subscribers(engine: Engine) -> list[str]:
    with transaction(engine) as s:
        return [d.user for d in s.exec(select(DigestSubscriber)).all()]


def _schedules(engine: Engine) -> list[tuple[str, str, str | None, str, bool]]:
    with transaction(engine) as s:
        found = s.exec(select(Schedule).order_by(Schedule.id)).all()  # type: ignore[arg-type]
        return [(x.repo, x.creator, x.channel, x.timezone, x.paused) for x in found]
