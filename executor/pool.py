"""The executor process: N workers in threads, sharing one engine, one Docker client."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import docker
from docker.errors import DockerException
from sqlalchemy import Engine
from sqlmodel import col, select

from executor.config import Config
from executor.llm import LLMClient
from executor.sandbox import LABEL, LABEL_EXECUTOR, SandboxError, remove_orphans
from executor.sandbox_image import ensure_image
from executor.worker import Worker
from storage.db import transaction
from storage.defaults import HEARTBEAT_TIMEOUT_S
from storage.lifecycle import WORKING
from storage.models import Task, utcnow


def installation_id(engine: Engine) -> str:
    """Names the database this executor serves, so executors of other installations sharing
    a Docker engine (or a test run) never touch each other's sandboxes."""
    url = engine.url.render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:8]


def new_executor_id(engine: Engine) -> str:
    return f"{installation_id(engine)}.{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def connect_docker() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except DockerException as exc:
        raise SandboxError(
            f"cannot reach the Docker engine ({exc}); start Docker, or set DOCKER_HOST"
        ) from exc
    return client


def remove_dead_sandboxes(client: docker.DockerClient, engine: Engine) -> list[str]:
    """Remove containers of this installation's executors that hold no live task: what a
    crash left behind. Live executors' and other installations' sandboxes are left alone."""
    ours = installation_id(engine) + "."
    live_since = utcnow() - timedelta(seconds=HEARTBEAT_TIMEOUT_S)
    with transaction(engine) as s:
        holders = s.exec(
            select(Task.worker_id).where(
                col(Task.state).in_(list(WORKING)), col(Task.heartbeat_at) >= live_since
            )
        ).all()
    live = {w.rsplit("/", 1)[0] for w in holders if w}
    executors = {
        c.labels.get(LABEL_EXECUTOR)
        for c in client.containers.list(all=True, filters={"label": LABEL})
    }
    removed: list[str] = []
    for executor_id in executors - live:
        if executor_id and executor_id.startswith(ours):
            removed += remove_orphans(client, executor_id=executor_id)
    return removed


def run_executor(
    *,
    engine: Engine,
    config: Config,
    home: Path,
    make_llm: Callable[[], LLMClient],
    concurrency: int = 1,
    drain: bool = False,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
) -> int:
    """Run workers until stopped (SIGINT/SIGTERM) or, with `drain`, until the queue is empty.
    Returns how many tasks were performed."""
    stop = stop or threading.Event()
    client = connect_docker()
    executor_id = new_executor_id(engine)
    for name in remove_dead_sandboxes(client, engine):
        log(f"removed leftover sandbox {name}")
    for image in sorted({repo.image for repo in config.repos.values()}):
        ensure_image(client, image)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    counts: list[int] = []
    workers = [
        Worker(
            engine=engine,
            config=config,
            home=home,
            docker=client,
            llm=make_llm(),
            worker_id=f"{executor_id}/{n}",
            executor_id=executor_id,
            stop=stop,
        )
        for n in range(concurrency)
    ]
    threads = [
        threading.Thread(target=lambda w=w: counts.append(w.work(drain=drain)), name=w.worker_id)
        for w in workers
    ]
    log(f"executor {executor_id}: {concurrency} worker(s){' (drain)' if drain else ''}")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker in workers:
        worker.llm.close()
    return sum(counts)
