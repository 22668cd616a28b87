"""Fixtures for tests of the Slack front end: a running Slack emulator. The database is
conftest's `engine`: every such test runs on SQLite and on PostgreSQL.

Registered in the root conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.slack.notifier import Tunables
from tests.slack_emulator import SlackEmulator

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


def start_bot(slack: SlackEmulator, home: Path, config: Path, *args: str) -> subprocess.Popen[str]:
    """`nightcrew bot [args]` as its own process against `slack`, output captured."""
    env = {
        **os.environ,
        **slack.env(),
        "NIGHTCREW_HOME": str(home),
        "NIGHTCREW_CONFIG": str(config),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "bot", *args],
        cwd=Path(__file__).parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
