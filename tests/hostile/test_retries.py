"""Deliveries counted once: Slack redelivers what it thinks the app missed (over HTTP the same
body again with `X-Slack-Retry-Num`; in Socket Mode the same envelope again, events with
`retry_attempt`), and a client can replay a signed request within its five minutes. However
often the same slash command, click, modal submission or event arrives, and whichever worker
process takes it, it makes one task, one nudge, one approval, and one answer."""

from __future__ import annotations

import socket as sockets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from slack_bolt import App
from sqlalchemy import Engine
from sqlmodel import col, select

from bot import actions
from bot.slack import blocks
from bot.slack.app import SlackEnv, build_app
from executor.config.schema import Config, RepoConfig
from storage.db import transaction
from storage.models import Nudge, Task, TaskEvent
from tests.slack_emulator import SlackEmulator, block_action, slash_command, view_submission
from tests.slack_fixtures import start_bot, to_awaiting_approval

REQUESTER = "U111"


@pytest.fixture
def app(engine: Engine, env: SlackEnv, tmp_path: Path) -> App:
    config = Config(repos={"api": RepoConfig(path=tmp_path)}, channels={"C111": "api"})
    return build_app(engine, lambda: config, env)


def prompts(engine: Engine) -> list[str]:
    with transaction(engine) as s:
        return [t.prompt for t in s.exec(select(Task).order_by(col(Task.id)))]


def approvals(engine: Engine) -> list[str | None]:
    with transaction(engine) as s:
        found = s.exec(select(TaskEvent).where(TaskEvent.kind == "state"))
        return [e.payload.get("by") for e in found if e.payload.get("to") == "merging"]


def awaiting_task(engine: Engine) -> None:
    with transaction(engine) as s:
        actions.add(s, repo="api", prompt="fix it", requester=REQUESTER, channel="C111")
    to_awaiting_approval(engine)


def test_a_slash_command_delivered_again_over_http_adds_one_task_and_answers_alike(
    slack: SlackEmulator, engine: Engine, url: str
) -> None:
    command = slash_command("add fix the flaky test", user_id=REQUESTER)
    first = slack.post_to_app(url, command)
    again = slack.post_to_app(url, command, retry_num=1, retry_reason="http_timeout")
    replayed = slack.post_to_app(url, command)  # a replay within the signature's 5 minutes
    assert prompts(engine) == ["fix the flaky test"]
    for answer in (first, again, replayed):
        assert answer.status == 200 and "queued task 1" in answer.text


def test_a_socket_mode_envelope_redelivered_adds_one_task(
    slack: SlackEmulator, engine: Engine, socket: None
) -> None:
    envelope = slack.send_envelope("slash_commands", slash_command("add bump the deps"))
    again = slack.redeliver(envelope)
    assert prompts(engine) == ["bump the deps"]
    assert again.ack is not None and "queued task 1" in again.ack.payload["text"]


def test_a_click_delivered_again_approves_once_and_answers_once(
    slack: SlackEmulator, engine: Engine, url: str, socket: None
) -> None:
    awaiting_task(engine)
    click = block_action(blocks.APPROVE, "1", user=REQUESTER)
    assert slack.post_to_app(url, click).status == 200
    slack.wait_until(slack.responses, what="the approval's answer")
    assert slack.post_to_app(url, click, retry_num=1).status == 200
    slack.send_envelope("interactive", click)  # and the same click over Socket Mode
    envelope = slack.send_envelope("interactive", click)
    slack.redeliver(envelope)
    assert approvals(engine) == [REQUESTER]
    with pytest.raises(TimeoutError):  # no "task 1 is merging; it was approved" refusals
        slack.wait_until(lambda: len(slack.responses()) > 1, timeout=1.0)
    assert "approved task 1" in slack.responses()[0].all_text


def test_a_modal_submission_delivered_again_is_one_nudge(
    slack: SlackEmulator, engine: Engine, socket: None
) -> None:
    awaiting_task(engine)
    values = {blocks.NOTE_BLOCK: {blocks.NOTE_INPUT: "also cover the empty list"}}
    submit = view_submission(blocks.CHANGES_MODAL, values, user=REQUESTER, private_metadata="1")
    envelope = slack.send_envelope("interactive", submit)
    slack.redeliver(envelope)
    with transaction(engine) as s:
        assert [n.text for n in s.exec(select(Nudge))] == ["also cover the empty list"]


def test_the_same_command_at_once_in_several_worker_processes_adds_one_task(
    tmp_path: Path, git_repo: Path, engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP mode's worker processes share no memory: only the database can tell that two of
    them hold the same delivery."""
    monkeypatch.setenv("NIGHTCREW_DATABASE_URL", db_url)
    config = tmp_path / "nightcrew.yaml"
    config.write_text(f"repos:\n  api:\n    path: {git_repo}\nchannels:\n  C111: api\n")
    with sockets.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/slack/events"
    with SlackEmulator(tokens=("xoxb-test",)) as slack:
        http = ("--http", "--port", str(port), "--workers", "2")
        proc = start_bot(slack, tmp_path / "home", config, *http)
        try:
            slack.wait_until(
                lambda: len(slack.calls("auth.test")) >= 2 or proc.poll() is not None,
                timeout=60,  # cold interpreters on a busy box
                what="the workers to start",
            )
            assert proc.poll() is None, proc.communicate(timeout=10)[0]
            commands = [slash_command(f"add task {i}") for i in range(4)]
            with ThreadPoolExecutor(12) as pool:
                answers = list(
                    pool.map(
                        lambda n: slack.post_to_app(url, commands[n % 4], retry_num=n // 4 or None),
                        range(24),
                    )
                )
        finally:
            proc.terminate()
            proc.wait(10)
    assert all(a.status == 200 and "queued task" in a.text for a in answers)
    assert sorted(prompts(engine)) == [f"task {i}" for i in range(4)]
