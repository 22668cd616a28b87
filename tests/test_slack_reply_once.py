"""A thread reply is one nudge even when two bot processes (HTTP workers) take two deliveries
of it at the same instant: Slack redelivers events it thinks were missed, and each worker
process has its own locks. The database's unique (task, reply ts) settles it."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import select

from bot.slack.handle import thread_reply
from executor.config.schema import Config, RepoConfig
from storage.db import make_engine, transaction
from storage.lifecycle import State
from storage.models import Nudge
from storage.tasks import create_task, transition

REPLIES = 15
CONFIG = Config(repos={"app": RepoConfig(path=Path("/nonexistent"))})  # U1, the requester, may


def _deliver(url: str, start: Any, results: Any) -> None:
    engine = make_engine(url, create=False)
    for n in range(REPLIES):
        start.wait()  # both processes take delivery `n` together
        outcome = thread_reply(engine, CONFIG, "C1", "100.1", f"200.{n}", "U1", f"reply {n}")
        results.put((n, outcome is not None))
    engine.dispose()


def test_two_processes_taking_the_same_reply_store_one_nudge(engine: Engine, db_url: str) -> None:
    with transaction(engine) as s:
        task = create_task(s, repo="app", prompt="p", requester="U1", channel="C1")
        assert task.id is not None
        task_id = task.id
    with transaction(engine) as s:
        transition(s, task_id, State.PREPARING, actor="test")
        transition(s, task_id, State.RUNNING, actor="test", thread_ts="100.1")
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_deliver, args=(db_url, start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0, "a delivery raised instead of recognising the duplicate"
    taken: dict[int, int] = {}
    for _ in range(2 * REPLIES):
        n, stored = results.get(timeout=5)
        taken[n] = taken.get(n, 0) + stored
    assert taken == {n: 1 for n in range(REPLIES)}, "each reply is taken by exactly one delivery"
    with transaction(engine) as s:
        per_reply = s.exec(
            select(Nudge.slack_ts, func.count()).group_by(Nudge.slack_ts)  # type: ignore[arg-type]
        ).all()
    assert sorted(per_reply) == sorted((f"200.{n}", 1) for n in range(REPLIES))
