"""The executor process: N workers in threads, sharing one engine, one Docker client."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, func
from sqlmodel import col, select

from executor.agents.llm import LLMClient
from executor.config.defaults import IDLE_POLL_S
from executor.config.schema import Config
from executor.runner.fleet import (
    connect_docker,
    new_executor_id,
    remove_dead_sandboxes,
    remove_stray_workspaces,
)
from executor.runner.worker import Worker
from executor.sandbox.image import ensure_image
from executor.sandbox.warm import SandboxSpec, WarmPool
from storage import wakeup
from storage.db import transaction
from storage.defaults import HEARTBEAT_TIMEOUT_S
from storage.lifecycle import State
from storage.models import Task


def run_executor(
    *,
    engine: Engine,
    config: Config,
    home: Path,
    make_llm: Callable[[], LLMClient],
    concurrency: int = 1,
    drain: bool = False,
    stop: threading.Event | None = None,
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
    log: Callable[[str], None] = print,
    reload_config: Callable[[], Config] | None = None,
    idle_poll_s: float = IDLE_POLL_S,
) -> int:
    """Run workers until stopped (SIGINT/SIGTERM) or, with `drain`, until the queue is empty.
    Idle workers wake when work is queued (storage.wakeup) and poll every `idle_poll_s`
    anyway. Returns how many tasks were performed."""
    stop = stop or threading.Event()
    client = connect_docker()
    executor_id = new_executor_id(engine)
    for name in remove_dead_sandboxes(client, engine, timeout_s=heartbeat_timeout_s):
        log(f"removed leftover sandbox {name}")
    for folder in remove_stray_workspaces(client, home / "sandboxes"):
        log(f"removed leftover sandbox folder {folder.name}")
    for image in sorted({repo.image for repo in config.repos.values()}):
        ensure_image(client, image)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    counts: list[int] = []
    # One HTTP client for all workers (httpx clients are thread-safe): eight would cost
    # start-up time on TLS contexts alone.
    llm = make_llm()
    stack = contextlib.ExitStack()  # the wake-up listener, once started
    # A spare per worker: workers that finish together find their next sandboxes started.
    sandboxes = WarmPool(
        client,
        executor_id=executor_id,
        root=home / "sandboxes",
        spares=concurrency,
        demand=lambda: _waiting(engine),
    )
    try:
        bell = stack.enter_context(wakeup.listen(engine, stop))
        sandboxes.fill({SandboxSpec.of(repo, llm.base_url) for repo in config.repos.values()})
        workers = [
            Worker(
                engine=engine,
                config=config,
                home=home,
                docker=client,
                llm=llm,
                worker_id=f"{executor_id}/{n}",
                executor_id=executor_id,
                stop=stop,
                heartbeat_timeout_s=heartbeat_timeout_s,
                sandboxes=sandboxes,
                reload=reload_config,
                bell=bell,
                idle_poll_s=idle_poll_s,
            )
            for n in range(concurrency)
        ]
        threads = [
            threading.Thread(
                target=lambda w=w: counts.append(w.work(drain=drain)), name=w.worker_id
            )
            for w in workers
        ]
        log(f"executor {executor_id}: {concurrency} worker(s){' (drain)' if drain else ''}")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        stack.close()  # no longer listening
        sandboxes.close()  # spares not taken, and used ones still being removed
        llm.close()
    return sum(counts)


def _waiting(engine: Engine) -> int:
    """Tasks waiting for a worker: spares beyond these would only wait themselves."""
    with transaction(engine) as s:
        return s.exec(
            select(func.count()).select_from(Task).where(col(Task.state) == State.QUEUED)
        ).one()
