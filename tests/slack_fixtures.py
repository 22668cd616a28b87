"""Fixtures for tests of the Slack front end: a running Slack emulator. The database is
conftest's `engine`: every such test runs on SQLite and on PostgreSQL.

Registered in the root conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.slack_emulator import SlackEmulator


@pytest.fixture
def slack() -> Iterator[SlackEmulator]:
    with SlackEmulator() as emulator:
        yield emulator
