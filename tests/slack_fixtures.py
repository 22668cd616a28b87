"""Fixtures for tests of the Slack front end: a running Slack emulator. The database is
conftest's `engine`: every such test runs on SQLite and on PostgreSQL.

Registered in the root conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

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
