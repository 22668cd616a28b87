"""Fleet rules at claim time: per-repo concurrency caps, with priorities still honoured."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from executor.config.schema import Config, RepoConfig
from executor.runner.worker import Worker
from storage.db import transaction
from storage.models import Priority
from storage.tasks import create_task


def worker(engine: Engine, config: Config, n: int) -> Worker:
    # Claiming needs only the database: no engine or model is touched.
    return Worker(
        engine=engine,
        config=config,
        home=Path("/nonexistent"),
        docker=None,  # type: ignore[arg-type]
        llm=None,
        worker_id=f"exec/{n}",
        executor_id="exec",  # type: ignore[arg-type]
    )


def test_a_repo_at_its_cap_is_skipped_and_others_still_run(engine: Engine, git_repo: Path) -> None:
    config = Config(
        repos={
            "app": RepoConfig(path=git_repo, max_concurrent=1),
            "lib": RepoConfig(path=git_repo),
        }
    )
    with transaction(engine) as s:
        ids = [
            create_task(s, repo=repo, prompt=repo, requester="U1", priority=prio).id
            for repo, prio in [
                ("app", Priority.HIGH),
                ("app", Priority.HIGH),
                ("lib", Priority.LOW),
            ]
        ]
    first = worker(engine, config, 0).claim()
    second = worker(engine, config, 1).claim()
    third = worker(engine, config, 2).claim()
    assert first is not None and first.id == ids[0]  # highest priority first
    assert second is not None and second.id == ids[2]  # app is at its cap: lib goes ahead
    assert third is None  # the second app task waits for the first to finish
