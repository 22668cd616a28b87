"""`/agent budget` and a budget-held task's card, end to end against the Slack emulator:
signed HTTP requests in, the notifier's card edits out; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from bot.slack.run import notifier_thread
from executor.config.schema import Config, RepoConfig
from executor.costs.budget import Books, held
from storage.db import transaction
from storage.queue import show_waiting
from storage.spend import charge
from storage.tasks import get_task
from tests.slack_emulator import SlackEmulator, slash_command
from tests.slack_fixtures import FAST, serve_http, slack_env


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "repos": {"api": RepoConfig(path=tmp_path), "web": RepoConfig(path=tmp_path)},
            "channels": {"C111": "api"},
            "budgets": {"daily_usd": 2, "repo_daily_usd": {"api": 0.5}},
        }
    )


@pytest.fixture
def url(engine: Engine, slack: SlackEmulator, config: Config) -> Iterator[str]:
    with notifier_thread(engine, slack_env(slack), FAST), serve_http(engine, slack, config) as url:
        yield url


def test_agent_budget_shows_spend_against_each_budget_and_the_card_says_why_it_waits(
    slack: SlackEmulator, engine: Engine, url: str, config: Config
) -> None:
    before = slack.post_to_app(url, slash_command("budget")).text
    assert "• repo api: $0.00 of $0.50 ($0.50 left)" in before
    slack.post_to_app(url, slash_command("fix the tests"))
    slack.post_to_app(url, slash_command("tidy the docs"))
    with transaction(engine) as s:
        now = datetime.now(UTC)
        charge(s, 1, model="m", tokens_in=9, tokens_out=1, cost_nanos=650_000_000, at=now)
        charge(s, 1, model="x", tokens_in=90, tokens_out=10, cost_nanos=None, at=now)
        day, budgets = Books.of(config).today(s)  # what an executor does when it claims
        show_waiting(s, held(budgets, day), marker="waiting for budget: ")

    def card_text() -> str | None:
        with transaction(engine) as s:
            ts = get_task(s, 2).thread_ts
        text = slack.message("C111", ts).all_text if ts else ""
        return text if "Waiting for budget" in text else None

    waiting = slack.wait_until(card_text, what="the card edited to say it waits")
    assert "the daily budget for repo api ($0.50) is spent" in waiting

    answer = slack.post_to_app(url, slash_command("budget"))
    assert answer.status == 200
    lines = answer.text.splitlines()
    assert lines[0].startswith("*Spend today*, ") and "(UTC); resets in " in lines[0]
    assert lines[1:] == [
        "• all repos: $0.65 of $2.00 ($1.35 left) + 100 tokens at unknown cost; 2 tasks waiting",
        "• repo api: $0.65 of $0.50 — *reached* + 100 tokens at unknown cost; 2 tasks waiting",
        "• repo web: $0.00",
    ]
    assert "/agent budget" in slack.post_to_app(url, slash_command("help")).text
