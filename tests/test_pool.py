"""The executor process's start-up: leftovers of crashed executors are removed, nobody else's."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine

from executor.git import quota
from executor.git.workspace import remove as remove_workspace
from executor.runner.fleet import remove_dead_sandboxes, remove_stray_workspaces
from executor.sandbox.container import Sandbox
from storage.db import make_engine, transaction
from storage.installation import installation_id
from storage.queue import claim_next
from storage.tasks import create_task


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'nightcrew.db'}")


def test_only_this_installations_dead_executors_lose_their_sandboxes(
    engine: Engine, docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path
) -> None:
    ours, here = installation_id(engine), socket.gethostname()
    exited = subprocess.Popen(["true"])
    exited.wait()  # a process id that is gone: an executor that ran here and crashed
    live, foreign = f"{ours}.host-1-aaaa", "0badc0de.host-3-cccc"
    dead = f"{ours}.{here}-{exited.pid}-bbbb"
    idle = f"{ours}.host-4-dddd"  # the sweeper itself: no task, but its spares wait for one
    # Idle peers, holding no task: one on this host (its process runs), one elsewhere whose
    # sandboxes are younger than ORPHAN_GRACE. Their spares are theirs, not leftovers.
    peer_here, peer_elsewhere = f"{ours}.{here}-{os.getpid()}-eeee", f"{ours}.other-5-ffff"
    with transaction(engine) as s:  # a live executor holds a task with a fresh heartbeat
        create_task(s, repo="app", prompt="x", requester="U1")
        claim_next(s, f"{live}/0")
    boxes = {}
    for executor_id in (live, dead, foreign, idle, peer_here, peer_elsewhere):
        workspace = tmp_path / executor_id
        workspace.mkdir()
        boxes[executor_id] = Sandbox.start(
            docker_client,
            task_id="1",
            executor_id=executor_id,
            workspace=workspace,
            image=sandbox_image,
        )
    try:
        removed = remove_dead_sandboxes(docker_client, engine, alive=idle)
        assert removed == [boxes[dead].name]
        # Other tests remove containers meanwhile: one gone between list and inspect is none.
        remaining = {c.name for c in docker_client.containers.list(all=True, ignore_removed=True)}
        kept = (live, foreign, idle, peer_here, peer_elsewhere)
        assert {boxes[n].name for n in kept} <= remaining
        # Once its sandboxes are older than the grace, the quiet executor elsewhere counts as
        # gone; this host's peer still runs, and the live one holds a task.
        later = remove_dead_sandboxes(docker_client, engine, alive=idle, grace=timedelta(0))
        assert later == [boxes[peer_elsewhere].name]
    finally:
        for box in boxes.values():
            box.remove()


def test_a_sandbox_folder_no_container_names_is_removed_at_start(
    docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path
) -> None:
    # A kill -9 between making a spare's folder (a loop-mounted image as root) and starting
    # its container leaves a folder no container sweep can find: the next start removes it.
    root, hours_ago = tmp_path / "sandboxes", time.time() - 2 * 3600
    root.mkdir()
    stray, fresh = root / "stray", root / "fresh"
    quota.make_folder(stray, 64 * 1024**2)
    fresh.mkdir()  # made just now: maybe another executor of this home is about to use it
    live = Sandbox.start(
        docker_client,
        task_id="1",
        executor_id="sweep-test",
        workspace=root / "live",
        own_workspace=True,
        image=sandbox_image,
    )
    try:
        for folder in (stray, root / "live"):
            os.utime(folder, (hours_ago, hours_ago))
        assert remove_stray_workspaces(docker_client, root) == [stray]
        assert not stray.exists() and not quota.image_of(stray).exists()
        assert (root / "live").is_dir() and fresh.is_dir()  # named by its container; new
        assert remove_stray_workspaces(docker_client, root) == []
    finally:
        live.remove()
        remove_workspace(root / "live")  # as the warm pool does once its container is gone


def test_each_database_has_its_own_installation_id(tmp_path: Path) -> None:
    """Kept in the database, not derived from its URL: two installations whose URLs look the
    same (every compose deployment's does) still tell their sandboxes apart."""
    one, two = (make_engine(f"sqlite:///{tmp_path / name / 'nightcrew.db'}") for name in "ab")
    again = make_engine(f"sqlite:///{tmp_path / 'a' / 'nightcrew.db'}")
    assert installation_id(one) == installation_id(again) != installation_id(two)
    for engine in (one, two, again):
        engine.dispose()
