"""The executor process's start-up: leftovers of crashed executors are removed, nobody else's."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine

from executor.fleet import installation_id, remove_dead_sandboxes
from executor.sandbox import Sandbox
from storage.db import make_engine, transaction
from storage.queue import claim_next
from storage.tasks import create_task


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'nightcrew.db'}")


def test_only_this_installations_dead_executors_lose_their_sandboxes(
    engine: Engine, docker_client: docker.DockerClient, sandbox_image: str, tmp_path: Path
) -> None:
    ours = installation_id(engine)
    live, dead, foreign = f"{ours}.host-1-aaaa", f"{ours}.host-2-bbbb", "0badc0de.host-3-cccc"
    idle = f"{ours}.host-4-dddd"  # the sweeper itself: no task, but its spares wait for one
    with transaction(engine) as s:  # a live executor holds a task with a fresh heartbeat
        create_task(s, repo="app", prompt="x", requester="U1")
        claim_next(s, f"{live}/0")
    boxes = {}
    for executor_id in (live, dead, foreign, idle):
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
        remaining = {c.name for c in docker_client.containers.list(all=True)}
        assert {boxes[n].name for n in (live, foreign, idle)} <= remaining
    finally:
        for box in boxes.values():
            box.remove()
