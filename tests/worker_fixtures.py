"""Fixtures for tests that run tasks through a real Worker: a small Python project in a real
git repo, and workers wired to a scripted model and the real Docker engine. The database is
conftest's `engine`: every such test runs on SQLite and on PostgreSQL.

Registered in the root conftest.py."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine

from bot import actions
from executor.agents.llm import LLMClient
from executor.config.schema import Config, Limits, RepoConfig
from executor.runner.worker import Worker
from executor.sandbox.container import LABEL_EXECUTOR
from storage.db import transaction
from storage.installation import installation_id
from storage.models import Task
from storage.tasks import get_task
from tests.conftest import git
from tests.llm_server import ScriptedLLM
from tests.waiting import wait_for as wait_for  # its old home: tests import it from here

BUGGY = "def add(a, b):\n    return a - b\n"
TESTS = (
    "import unittest\nfrom calc import add\n\n"
    "class T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n"
)


@pytest.fixture
def project(git_repo: Path) -> Path:
    (git_repo / "calc.py").write_text(BUGGY)
    (git_repo / "test_calc.py").write_text(TESTS)
    (git_repo / "AGENTS.md").write_text("Run tests with: python3 -m unittest\n")
    git(git_repo, "add", ".")
    git(git_repo, "commit", "-q", "-m", "calc with a bug")
    return git_repo


RunWorker = Callable[..., Worker]


@pytest.fixture
def make_worker(
    engine: Engine,
    project: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    sandbox_image: str,
    test_executor: str,
) -> Iterator[RunWorker]:
    clients: list[LLMClient] = []

    def make(
        llm: ScriptedLLM,
        *,
        model: str = "scripted-model",
        timeout: float = 30,
        stream: bool = False,
        repo_options: dict | None = None,
        config_options: dict | None = None,  # budgets, prices, digest (its timezone)
        clock: Callable[[], datetime] | None = None,
        **limits: float,
    ) -> Worker:
        options = {"path": project, "base_branch": "main", "review": {"enabled": False}}
        repo = RepoConfig(**(options | (repo_options or {})), limits=Limits(**limits))
        client = LLMClient(
            base_url=llm.base_url,
            api_key=None,
            model=model,
            backoff=0.01,
            max_attempts=2,
            timeout=timeout,
            stream=stream,
        )
        clients.append(client)
        return Worker(
            engine=engine,
            config=Config.model_validate({"repos": {"app": repo}, **(config_options or {})}),
            home=tmp_path / "home",
            docker=docker_client,
            llm=client,
            worker_id=f"{test_executor}/0",
            executor_id=test_executor,
            **({"clock": clock} if clock else {}),
        )

    yield make
    for client in clients:
        client.close()


def add_task(engine: Engine, prompt: str = "fix add() in calc.py") -> int:
    with transaction(engine) as s:
        task = actions.add(s, repo="app", prompt=prompt, requester="U1", channel="C1").task
        assert task.id is not None
        return task.id


def task(engine: Engine, task_id: int) -> Task:
    with transaction(engine) as s:
        return get_task(s, task_id)


def our_sandboxes(client: docker.DockerClient, engine: Engine) -> list:
    """Sandboxes of the executors serving this database. Sparse: the engine is shared with
    other tests, and a full listing inspects containers that may be gone by then."""
    prefix = installation_id(engine) + "."
    return [
        c
        for c in client.containers.list(all=True, sparse=True, filters={"label": LABEL_EXECUTOR})
        if (c.attrs.get("Labels") or {}).get(LABEL_EXECUTOR, "").startswith(prefix)
    ]


def containers_of(client: docker.DockerClient, executor_id: str) -> list:
    # A spare removed between the list and its inspect is no error: it is simply not there.
    return client.containers.list(
        all=True, filters={"label": f"nightcrew.executor={executor_id}"}, ignore_removed=True
    )


# An agent's command that holds until the test calls `release` (or 60 s have passed, when
# the test fails): a window for the test to act in that no sleep on a loaded box gives.
HOLD = "i=0; until [ -e /tmp/go ] || [ $i -ge 300 ]; do sleep 0.2; i=$((i+1)); done"


def release(client: docker.DockerClient, executor_id: str) -> None:
    """Let a `HOLD` go on in the executor's sandboxes (spares included: they ignore it)."""
    for container in containers_of(client, executor_id):
        with contextlib.suppress(docker.errors.DockerException):
            container.exec_run(["touch", "/tmp/go"])
