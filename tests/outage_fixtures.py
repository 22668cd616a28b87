"""A real executor in a thread for tests of model outages: `run_executor` (worker threads
sharing one LLM client, warm sandboxes, real Docker) on a scripted model, with the client's
outage options. Registered in the root conftest.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from executor.agents.llm import LLMClient
from executor.config.schema import Config, RepoConfig
from executor.runner.pool import run_executor
from tests.llm_server import ScriptedLLM


@dataclass
class Executor:
    """`run_executor` in a thread, as `nightcrew executor --drain` runs it."""

    engine: Engine
    project: Path
    home: Path
    make_llm: Callable[[], LLMClient]
    concurrency: int
    thread: threading.Thread | None = None
    done: list[int] = field(default_factory=list)

    def start(self) -> Executor:
        repo = RepoConfig(path=self.project, base_branch="main", review={"enabled": False})

        def run() -> None:
            performed = run_executor(
                engine=self.engine,
                config=Config(repos={"app": repo}),
                home=self.home,
                make_llm=self.make_llm,
                concurrency=self.concurrency,
                drain=True,
                log=lambda _: None,
            )
            self.done.append(performed)

        self.thread = threading.Thread(target=run, name="executor", daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the executor did not finish in {timeout:g} s"


@pytest.fixture
def executor(
    engine: Engine,
    project: Path,
    tmp_path: Path,
    docker_client: Any,
    sandbox_image: str,
) -> Iterator[Callable[..., Executor]]:
    clients: list[LLMClient] = []
    started: list[Executor] = []

    def make(llm: ScriptedLLM, concurrency: int = 1, **options: Any) -> Executor:
        def make_llm() -> LLMClient:
            client = LLMClient(base_url=llm.base_url, api_key=None, model="m", **options)
            clients.append(client)
            return client

        ex = Executor(engine, project, tmp_path / "home", make_llm, concurrency).start()
        started.append(ex)
        return ex

    yield make
    for ex in started:
        if ex.thread is not None:
            ex.thread.join(60)
