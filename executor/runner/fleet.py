"""Executors as a fleet: who is who on a shared Docker engine, and sweeping up after crashes."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from datetime import timedelta
from weakref import WeakKeyDictionary

import docker
from docker.errors import DockerException
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col, select

from executor.sandbox.container import LABEL, LABEL_EXECUTOR, SandboxError, remove_orphans
from storage.db import reading, transaction
from storage.defaults import HEARTBEAT_TIMEOUT_S
from storage.lifecycle import WORKING
from storage.models import Installation, Task, utcnow

# Another host's executor that holds no task may be idle or dead: its sandboxes are removed
# once this old. An idle one's spares are re-made; a task's sandbox always has a live holder.
ORPHAN_GRACE = timedelta(hours=1)


def installation_id(engine: Engine) -> str:
    """This database's random id (made by its migration), so executors of other installations
    sharing a Docker engine (or a test run) never touch each other's sandboxes. A database
    that has none yet (not migrated) is named by a hash of its URL, as before."""
    known = _installations.get(engine)
    if known is None:
        try:
            with reading(engine) as s:
                known = s.exec(select(Installation.id)).first()
        except SQLAlchemyError:  # no such table: not migrated
            known = None
        url = engine.url.render_as_string(hide_password=True)
        known = known or hashlib.sha256(url.encode()).hexdigest()[:8]
        _installations[engine] = known
    return known


_installations: WeakKeyDictionary[Engine, str] = WeakKeyDictionary()


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
    grace: timedelta = ORPHAN_GRACE,
) -> list[str]:
    """Remove containers of this installation's executors that are gone: what a crash left
    behind. An executor holding a live task is alive, and so is `alive` (the caller). One
    holding none may simply be idle, keeping warm spares: on this host its process id tells
    (gone: everything of it goes); on another host only its sandboxes older than
    `grace` go (an idle executor finds a removed spare gone and starts another).
    Other installations' sandboxes are never touched. Run at start and with every reaping."""
    ours = installation_id(engine) + "."
    now = utcnow()
    live_since = now - timedelta(seconds=timeout_s)
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
        if not executor_id or not executor_id.startswith(ours):
            continue
        gone = _gone_here(executor_id)
        if gone is False:
            continue  # idle on this host: its spares are its own
        before = None if gone else now - grace
        removed += remove_orphans(client, executor_id=executor_id, created_before=before)
    return removed


def _gone_here(executor_id: str) -> bool | None:
    """Whether an executor of this host has exited (by its process id); None when it ran on
    another host, or its id does not say (see new_executor_id)."""
    try:
        host, pid, _ = executor_id.split(".", 1)[1].rsplit("-", 2)
        number = int(pid)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(number, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: it exists
        return False
    return False
