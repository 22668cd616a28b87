"""Executors as a fleet: who is who on a shared Docker engine, and sweeping up after crashes."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from datetime import timedelta

import docker
from docker.errors import DockerException
from sqlalchemy import Engine
from sqlmodel import col, select

from executor.sandbox import LABEL, LABEL_EXECUTOR, SandboxError, remove_orphans
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


def remove_dead_sandboxes(
    client: docker.DockerClient,
    engine: Engine,
    *,
    timeout_s: float = HEARTBEAT_TIMEOUT_S,
    alive: str | None = None,
) -> list[str]:
    """Remove containers of this installation's executors that hold no live task: what a
    crash left behind. Live executors' and other installations' sandboxes are left alone, and
    so are those of `alive` (the caller: an idle executor's warm spares are not leftovers).
    Run at start and with every reaping, so a quick restart still sweeps up later."""
    ours = installation_id(engine) + "."
    live_since = utcnow() - timedelta(seconds=timeout_s)
    with transaction(engine) as s:
        holders = s.exec(
            select(Task.worker_id).where(
                col(Task.state).in_(list(WORKING)), col(Task.heartbeat_at) >= live_since
            )
        ).all()
    live = {w.rsplit("/", 1)[0] for w in holders if w} | {alive}
    # Sparse: no inspect per container (a sandbox removed meanwhile is no error), labels only.
    executors = {
        (c.attrs.get("Labels") or {}).get(LABEL_EXECUTOR)
        for c in client.containers.list(all=True, sparse=True, filters={"label": LABEL})
    }
    removed: list[str] = []
    for executor_id in executors - live:
        if executor_id and executor_id.startswith(ours):
            removed += remove_orphans(client, executor_id=executor_id)
    return removed
