"""`/agent` parsing and Block Kit rendering: pure, no Slack."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.slack import blocks
from bot.slack.commands import Command, CommandError, parse
from storage.lifecycle import State
from storage.models import Priority, Task


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Command("help")),
        ("help", Command("help")),
        ("add fix the tests", Command("add", prompt="fix the tests")),
        ("fix the flaky payments test", Command("add", prompt="fix the flaky payments test")),
        (
            "add --repo api --priority high fix it",
            Command("add", prompt="fix it", repo="api", priority=Priority.HIGH),
        ),
        (
            "--repo=api -p low tidy up",
            Command("add", prompt="tidy up", repo="api", priority=Priority.LOW),
        ),
        ("list", Command("list")),
        ("list mine", Command("list", scope="mine")),
        ("ls all", Command("list", scope="all")),
        ("show #7", Command("show", task_id=7)),
        ("cancel 3", Command("cancel", task_id=3)),
        ("RETRY 12", Command("retry", task_id=12)),
        ("repos", Command("repos")),
        ("merge the two config loaders", Command("add", prompt="merge the two config loaders")),
        ("digest", Command("digest", action="show")),
        ("digest Subscribe", Command("digest", action="subscribe")),
        ("digest the logs", CommandError),
        (
            'schedule "0 9 * * 1" --repo api update the dependencies',
            Command(
                "schedule",
                action="add",
                cron="0 9 * * 1",
                prompt="update the dependencies",
                repo="api",
            ),
        ),
        (
            "schedule \u201c30 7 * * 1-5\u201d --tz Europe/Berlin check the nightly build",
            Command(
                "schedule",
                action="add",
                cron="30 7 * * 1-5",
                prompt="check the nightly build",
                timezone="Europe/Berlin",
            ),
        ),
        (
            "schedule @weekly bump deps",
            Command("schedule", action="add", cron="@weekly", prompt="bump deps"),
        ),
        ('add -r api --repo "web" fix it', Command("add", prompt="fix it", repo="web")),
        (
            'schedule "0 9 * * 1" -r api --timezone UTC say "hi" to them',
            Command(
                "schedule",
                action="add",
                cron="0 9 * * 1",
                prompt='say "hi" to them',
                repo="api",
                timezone="UTC",
            ),
        ),
        (
            'schedule "0 9 * * 1"bump deps',
            Command("schedule", action="add", cron="0 9 * * 1", prompt="bump deps"),
        ),
        ("schedule list", Command("schedule", action="list")),
        ("schedule pause 3", Command("schedule", action="pause", schedule_id=3)),
        ("schedule delete 12", Command("schedule", action="delete", schedule_id=12)),
    ],
)
def test_commands_parse(text: str, expected: Command | type[CommandError]) -> None:
    if expected is CommandError:
        with pytest.raises(CommandError):
            parse(text)
        return
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("add", "^the prompt is empty; say what the agent should do: `/agent add"),
        ('schedule "0 9 * * 1" -r api', "^the prompt is empty; say what the agent should do: "),
        ("add --repo", "--repo needs a value"),
        ("add --priority urgent fix", "not one of high, normal, low"),
        ("add --colour red fix", "unknown option"),
        ("show", "needs one task id"),
        ("show 1 2", "needs one task id"),
        ("digest the logs", "takes mine, subscribe or unsubscribe .*`/agent add digest the logs`"),
        ("cancel seven", "not a task id"),
        ("lst", "unknown subcommand 'lst'"),
        ("approve 4", "button on the task's card"),
        ("list everything", "mine, channel or all"),
        ("schedule", "needs more"),
        ("schedule 0 9 * * 1 bump deps", "put the cron expression in quotes"),
        ('schedule "0 9 * * 1"', "prompt is empty"),
        ('schedule "" bump deps', "cron expression is empty"),
        ('schedule "0 9 * * 1" --colour red bump', "unknown option"),
        ("schedule pause", "needs a schedule id"),
        ("schedule delete x", "needs a schedule id"),
    ],
)
def test_mistakes_say_what_to_do(text: str, says: str) -> None:
    with pytest.raises(CommandError, match=says):
        parse(text)


@given(st.text())
@example("DIGEST")  # Hypothesis found it (1 seed in 40) when digest was left out below
@example("Schedule list")
@example('schedule "0 9 * * 1" bump deps')
def test_any_text_is_a_command_or_a_clear_error(text: str) -> None:
    try:
        command = parse(text)
    except CommandError as exc:
        assert str(exc)
        return
    verbs = {"add", "list", "show", "cancel", "retry", "repos", "budget", "help"}
    assert command.verb in verbs | {"digest", "schedule"}
    if command.verb == "add":
        assert command.prompt.strip()
    if command.verb in {"show", "cancel", "retry"}:
        assert command.task_id is not None and command.task_id > 0
    if command.verb == "digest":
        assert command.action in {"show", "mine", "subscribe", "unsubscribe"}
    if command.verb == "schedule":
        assert command.action in {"add", "list", "pause", "resume", "delete"}
        if command.action == "add":
            assert command.cron.strip() and command.prompt.strip()


def _task(state: State, **fields: object) -> Task:
    return Task(
        id=7,
        repo="api",
        prompt="fix it",
        requester="U1",
        state=state,
        branch="nightcrew/7-fix-it",
        **fields,
    )


@pytest.mark.parametrize(
    ("state", "buttons"),
    [
        (State.RUNNING, [blocks.NUDGE, blocks.CANCEL]),
        (State.QUEUED, [blocks.NUDGE, blocks.CANCEL]),
        (State.AWAITING_APPROVAL, [blocks.APPROVE, blocks.REJECT, blocks.CHANGES, blocks.DIFFSTAT]),
        (State.FAILED, [blocks.RETRY, blocks.NUDGE]),
        (State.NEEDS_INPUT, [blocks.RETRY, blocks.NUDGE]),
        (State.MERGING, []),
        (State.MERGED, []),
    ],
)
def test_card_buttons_fit_the_state(state: State, buttons: list[str]) -> None:
    text, card = blocks.card(_task(state, turns=3, tokens_in=1000, cost_nanos=250_000_000))
    ids = [e["action_id"] for b in card if b["type"] == "actions" for e in b["elements"]]
    assert ids == buttons
    assert all(e["value"] == "7" for b in card if b["type"] == "actions" for e in b["elements"])
    shown = str(card)
    for fact in ("fix it", "`api`", "nightcrew/7-fix-it", "3 turns", "1,000 tokens", "$0.25"):
        assert fact in shown
    assert text.startswith("Task 7")


def test_long_text_is_cut_with_a_note_within_slacks_limits() -> None:
    _, card = blocks.card(_task(State.AWAITING_APPROVAL, summary="x" * 10_000))
    texts = [b["text"]["text"] for b in card if b["type"] == "section"]
    assert all(len(t) <= blocks.MAX_SECTION for t in texts)
    assert any("more characters" in t for t in texts)
    many = [_task(State.RUNNING) for _ in range(200)]
    assert len(blocks.task_list(many, "All")) <= blocks.MAX_BLOCKS
    assert len(blocks.home([("Running", many)])["blocks"]) <= blocks.MAX_BLOCKS


def test_milestones_only_for_what_people_care_about() -> None:
    task = _task(State.FAILED)
    assert blocks.milestone(task, {"from": "queued", "to": "preparing"}) is None
    line = blocks.milestone(task, {"from": "running", "to": "failed", "reason": "model down"})
    assert line is not None and "failed: model down" in line


def test_text_from_people_and_agents_cannot_ping_or_forge_links() -> None:
    task = _task(State.AWAITING_APPROVAL, summary="done <!channel> see <https://evil|docs>")
    shown = str(blocks.card(task)[1])
    assert "<!channel>" not in shown and "&lt;!channel&gt;" in shown
    assert "<https://evil" not in shown
