"""Tasks placed at chosen instants, for digest tests with a frozen clock: created through
storage like any task, then given the state and timestamps a day of work would have left;
and the pair of helpers that read back what the digest and the schedules wrote."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from executor.config.schema import Config, Digest, RepoConfig
from storage.db import transaction
from storage.lifecycle import CLOSED, State
from storage.models import Outbox, Task
from storage.tasks import create_task, record


def put_task(
    session: Session,
    state: State,
    at: datetime,
    *,
    prompt: str = "fix it",
    requester: str = "U111",
    channel: str | None = "C111",
    risk: str | None = None,
    **fields: Any,
) -> int:
    """A task in `state`, last changed (and finished, if closed or failed) at `at`; with
    `risk`, a proof pack of that risk level."""
    task = create_task(session, repo="api", prompt=prompt, requester=requester, channel=channel)
    assert task.id is not None
    values: dict[str, Any] = {"state": state, "updated_at": at, "created_at": at, **fields}
    if state in CLOSED or state is State.FAILED:
        values["finished_at"] = at
    session.execute(update(Task).where(col(Task.id) == task.id).values(**values))
    if risk is not None:
        proof = {
            "files": ["app.py"],
            "insertions": 4,
            "deletions": 1,
            "checks": [{"command": "pytest", "passed": risk != "high"}],
            "review": {"verdict": "approve", "summary": "ok"},
            "risk": {"level": risk, "reasons": [f"{risk} for the test"]},
        }
        record(session, task.id, "proof", proof)
    return task.id


def config(
    root: Path,
    *,
    cron: str = "0 8 * * *",
    timezone: str = "Europe/Berlin",
    channels: tuple[str, ...] = ("C111", "C222"),
    approvers: tuple[str, ...] = (),
) -> Config:
    return Config(
        repos={"api": RepoConfig(path=root, approvers=list(approvers))},
        channels={"C111": "api"},
        digest=Digest(cron=cron, timezone=timezone, channels=list(channels)),
    )


def all_tasks(engine: Engine) -> list[Task]:
    """Every task, oldest first: what schedules (or people) queued."""
    with transaction(engine) as session:
        return list(session.exec(select(Task).order_by(col(Task.id))).all())


def posts(engine: Engine) -> list[Outbox]:
    """The outbox's `post` rows, oldest first: what the digest queued for Slack."""
    with transaction(engine) as session:
        rows = session.exec(select(Outbox).where(Outbox.kind == "post").order_by(col(Outbox.id)))
        return list(rows.all())
