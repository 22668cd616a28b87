"""A Slack request acted on once: a redelivered slash command gets the first answer and adds
nothing; the bot's clock forgets keys after a day (never inside an ack), and only those."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, update
from sqlmodel import col, select

from bot.scheduler import Scheduler
from bot.slack.handle import run_command
from executor.config.schema import Config, RepoConfig
from storage.db import transaction
from storage.deliveries import KEEP
from storage.models import SlackDelivery, Task, utcnow

CONFIG = Config(repos={"app": RepoConfig(path=Path("/nonexistent"))})


def command(text: str) -> dict[str, str]:
    return {"text": text, "user_id": "U1", "channel_id": "C1"}


def keys(engine: Engine) -> set[str]:
    with transaction(engine) as s:
        return set(s.exec(select(SlackDelivery.key)).all())


def test_a_redelivered_command_gets_its_first_answer_and_old_keys_are_pruned_by_the_clock(
    engine: Engine,
) -> None:
    first = run_command(engine, CONFIG, command("add fix it"), delivery="trigger:1")
    again = run_command(engine, CONFIG, command("add fix it"), delivery="trigger:1")
    assert again == first and first["text"].startswith("queued task")
    run_command(engine, CONFIG, command("add other"), delivery="trigger:2")
    with transaction(engine) as s:
        assert len(s.exec(select(Task)).all()) == 2
        old = utcnow() - KEEP - timedelta(minutes=1)
        s.execute(
            update(SlackDelivery)
            .where(col(SlackDelivery.key) == "trigger:1")
            .values(created_at=old)
        )
    assert Scheduler(engine, lambda: CONFIG, digests=False).prune_deliveries() == 1
    assert keys(engine) == {"trigger:2"}  # the recent key stays: its redelivery still counts once
    run_command(engine, CONFIG, command("add other"), delivery="trigger:2")
    with transaction(engine) as s:
        assert len(s.exec(select(Task)).all()) == 2
