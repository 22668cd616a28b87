"""Executors as a fleet: who is who on a shared Docker engine, and sweeping up after crashes."""

from __future__ import annotations

import os
import secrets
import socket
import time
from datetime import timedelta
from pathlib import Path

import docker
from docker.errors import DockerException
from sqlalchemy import Engine
from sqlmodel import col, select

from executor.git.workspace import WorkspaceError
from executor.git.workspace import remove as remove_workspace
from executor.sandbox.container import (
    LABEL,
    LABEL_EXECUTOR,
    LABEL_WORKSPACE,
    SandboxError,
    remove_orphans,
)
from storage.db import transaction
from storage.defaults import HEARTBEAT_TIMEOUT_S
from storage.installation import installation_id
from storage.lifecycle import WORKING
from storage.models import Task, utcnow

# Another host's executor that holds no task may be idle or dead: its sandboxes are removed
# once this old. An idle one's spares are re-made; a task's sandbox always has a live holder.
ORPHAN_GRACE = timedelta(hours=1)


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


def remove_stray_workspaces(
    client: docker.DockerClient, root: Path, *, grace: timedelta = ORPHAN_GRACE
) -> list[Path]:
    """Sandbox folders under `root` (an executor's `<home>/sandboxes`) that no container names
    and that nothing touched for `grace`: a kill -9 between making a folder (a loop-mounted
    image of up to `limits.disk`) and starting its container, or between removing the
    container and its folder, leaves one that no container sweep can find. Run at start; the
    grace spares a folder another executor sharing this home is about to use."""
    if not root.is_dir():
        return []
    named = {  # sparse, as remove_dead_sandboxes: labels only, no inspect per container
        (c.attrs.get("Labels") or {}).get(LABEL_WORKSPACE)
        for c in client.containers.list(all=True, sparse=True, filters={"label": LABEL})
    }
    cutoff = time.time() - grace.total_seconds()
    removed: list[Path] = []
    for folder in sorted(root.iterdir()):
        if (
            folder.is_symlink()
            or not folder.is_dir()
            or named & {str(folder), str(folder.resolve())}
        ):
            continue
        if folder.stat().st_mtime > cutoff:  # made (or written at its top) within the grace
            continue
        try:
            remove_workspace(folder)
        except WorkspaceError:
            continue  # still busy: the next start tries again
        removed.append(folder)
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
