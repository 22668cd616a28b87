"""Fixtures for tests of the Slack front end: a running Slack emulator. The database is
conftest's `engine`: every such test runs on SQLite and on PostgreSQL.

Registered in the root conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine

from bot.slack.notifier import Tunables
from storage.db import transaction
from storage.lifecycle import State
from storage.tasks import get_task, record, transition
from tests.claiming import claim
from tests.slack_emulator import Message, SlackEmulator

if TYPE_CHECKING:  # Bolt is imported by the tests that use it, not by every test run
    from slack_bolt import App

    from bot.slack.app import SlackEnv
    from bot.slack.notifier import Notifier
    from executor.config.schema import Config

# A notifier for tests: no pacing, quick retries and polls, a short lease.
FAST = Tunables(
    card_edit_interval_s=0.2,
    channel_interval_s=0.0,
    backoff_base_s=0.1,
    idle_poll_s=0.02,
    lease_s=0.5,
    reaction_poll_s=0.05,
)


@pytest.fixture
def slack() -> Iterator[SlackEmulator]:
    with SlackEmulator() as emulator:
        yield emulator


def slack_env(slack: SlackEmulator, *, socket_mode: bool = True) -> SlackEnv:
    """The bot's Slack settings for `slack`; without `socket_mode` there is no app-level
    token, so the bot would serve HTTP mode."""
    from bot.slack.app import SlackEnv

    app_token = slack.app_token if socket_mode else None
    return SlackEnv(slack.bot_token, app_token, slack.signing_secret, slack.api_url)


@pytest.fixture
def notifier(engine: Engine, slack: SlackEmulator) -> Iterator[Notifier]:
    """The notifier draining `engine`'s outbox into `slack`, in a thread, FAST."""
    from bot.slack.run import notifier_thread

    with notifier_thread(engine, slack_env(slack), FAST) as running:
        yield running


@contextmanager
def serve_http(engine: Engine, slack: SlackEmulator, config: Config) -> Iterator[str]:
    """The Bolt app with every listener, served in HTTP mode (signatures checked) from this
    process; yields the URL Slack posts to."""
    from bot.slack.app import build_app
    from bot.slack.run import http_mode

    app = build_app(engine, lambda: config, slack_env(slack))
    with http_mode(app, host="127.0.0.1", port=0) as url:
        yield url


@pytest.fixture
def env(slack: SlackEmulator) -> SlackEnv:
    """The bot's Slack settings for `slack`: Socket Mode and HTTP mode both possible."""
    return slack_env(slack)


@pytest.fixture
def url(app: App) -> Iterator[str]:
    """The module's `app` fixture served in HTTP mode (signatures checked); its URL."""
    from bot.slack.run import http_mode

    with http_mode(app, host="127.0.0.1", port=0) as url:
        yield url


@pytest.fixture
def socket(app: App, env: SlackEnv, slack: SlackEmulator) -> Iterator[None]:
    """The module's `app` fixture connected to `slack` over Socket Mode."""
    from bot.slack.run import socket_mode

    with socket_mode(app, env) as handler:
        slack.wait_connected()
        yield
        handler.client.auto_reconnect_enabled = False
        slack.close_connections()


def card_of(slack: SlackEmulator, engine: Engine, task_id: int = 1) -> Message:
    """The task's card as it stands in Slack, once the notifier has posted it."""

    def posted() -> tuple[str, str] | None:
        with transaction(engine) as session:
            task = get_task(session, task_id)
        return (task.channel, task.thread_ts) if task.channel and task.thread_ts else None

    channel, ts = slack.wait_until(posted, 30, what="the card's ts stored on the task")
    return slack.message(channel, ts)


def to_awaiting_approval(engine: Engine, summary: str = "fixed it", **proof: object) -> None:
    """The next queued task through a run to awaiting approval, with a proof pack (`proof`
    overrides its fields), as a worker leaves it."""
    task = claim(engine, running=True)
    with transaction(engine) as session:
        pack = {
            "diff_stat": " app.py | 2 +-",
            "files": ["app.py"],
            "insertions": 1,
            "deletions": 1,
            "checks": [{"command": "pytest", "passed": True}],
            "review": {"verdict": "approve", "summary": "small and tested"},
        }
        record(session, task.id, "proof", pack | proof)
        transition(
            session, task.id, State.AWAITING_APPROVAL, reason="done", actor="w1", summary=summary
        )


def start_bot(slack: SlackEmulator, home: Path, config: Path, *args: str) -> subprocess.Popen[str]:
    """`nightcrew bot [args]` as its own process against `slack`, output captured."""
    env = {
        **os.environ,
        **slack.env(),
        "NIGHTCREW_HOME": str(home),
        "NIGHTCREW_CONFIG": str(config),
        "NIGHTCREW_WEB_PORT": os.environ.get("NIGHTCREW_WEB_PORT", "0"),  # tests run side by side
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "bot", *args],
        cwd=Path(__file__).parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
