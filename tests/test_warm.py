"""Warm sandboxes against the real engine: a task gets a fresh spare that nobody used, a
used sandbox is never handed out again, and no spare or folder outlives the executor, neither
at shutdown nor after a crash and the sweep."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine

from executor.agents.llm import LLMClient
from executor.config.schema import Config, RepoConfig
from executor.runner.pool import run_executor
from executor.sandbox.container import LABEL_EXECUTOR, LABEL_WORKSPACE, remove_orphans
from executor.sandbox.warm import SandboxSpec, WarmPool, discard
from storage.installation import installation_id
from storage.lifecycle import State
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.worker_fixtures import add_task, task, wait_for

LEAVE_BEHIND = "setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo secret > /tmp/left; echo ok"
LOOK = "ps -eo args; ls -a /tmp /workspace"


@pytest.fixture
def spec(sandbox_image: str) -> SandboxSpec:
    return SandboxSpec.of(RepoConfig(path=Path("/nonexistent"), image=sandbox_image))


@pytest.fixture
def pool(
    docker_client: docker.DockerClient, test_executor: str, tmp_path: Path
) -> Iterator[WarmPool]:
    pool = WarmPool(docker_client, executor_id=test_executor, root=tmp_path / "sb", spares=1)
    yield pool
    pool.close()


def sandboxes_of(client: docker.DockerClient, executor_prefix: str) -> list[str]:
    """Names of the sandboxes of executors whose id starts with `executor_prefix`. Sparse:
    one list call, no lookup per container that a removal under way could race."""
    listed = client.containers.list(all=True, sparse=True, filters={"label": LABEL_EXECUTOR})
    return [
        str(c.attrs["Names"][0]).lstrip("/")
        for c in listed
        if (c.attrs.get("Labels") or {}).get(LABEL_EXECUTOR, "").startswith(executor_prefix)
    ]


def ready(pool: WarmPool, spec: SandboxSpec) -> list[str]:
    """Names of the spares ready now."""
    return [s.name for s in pool._ready.get(spec, [])]


def test_a_taken_sandbox_is_a_fresh_spare_and_is_never_handed_out_again(
    pool: WarmPool, spec: SandboxSpec, docker_client: docker.DockerClient, test_executor: str
) -> None:
    pool.fill([spec])
    wait_for(lambda: len(ready(pool, spec)) == 1)
    spare = ready(pool, spec)[0]

    first = pool.take(spec)
    assert first.name == spare  # started before it was asked for
    assert list(first.workspace.iterdir()) == []  # the task's clone goes here
    assert "sleep 300" not in first.exec(LOOK).output
    assert first.exec(LEAVE_BEHIND).output == "ok\n"
    wait_for(lambda: len(ready(pool, spec)) == 1)  # the replacement
    pool.retire(first, lambda: discard(first))  # its folder is a mount now: unmount it

    second = pool.take(spec)
    assert second.container.id != first.container.id
    seen = second.exec(LOOK).output
    assert "sleep 300" not in seen and "left" not in seen  # nothing of the first task's
    wait_for(lambda: first.name not in sandboxes_of(docker_client, test_executor))
    pool.retire(second, lambda: discard(second))


def test_spares_and_their_folders_are_removed_at_close(
    pool: WarmPool, spec: SandboxSpec, docker_client: docker.DockerClient, test_executor: str
) -> None:
    pool.fill([spec])
    wait_for(lambda: len(ready(pool, spec)) == 1)
    folder = pool._ready[spec][0].workspace
    assert folder.is_dir()
    pool.close()
    assert sandboxes_of(docker_client, test_executor) == []
    assert not folder.exists()


def test_a_crashed_executors_spares_and_folders_go_with_the_sweep(
    docker_client: docker.DockerClient, spec: SandboxSpec, test_executor: str, tmp_path: Path
) -> None:
    crashed = f"{test_executor}-crashed"
    pool = WarmPool(docker_client, executor_id=crashed, root=tmp_path / "sb", spares=2)
    pool.fill([spec])
    wait_for(lambda: len(ready(pool, spec)) == 2)
    taken = pool.take(spec)  # one in use by a task when the executor died
    (taken.workspace / "work.txt").write_text("x")
    labelled = {
        c.attrs["Labels"][LABEL_WORKSPACE]
        for c in docker_client.containers.list(
            all=True, sparse=True, filters={"label": f"{LABEL_EXECUTOR}={crashed}"}
        )
    }
    assert str(taken.workspace) in labelled

    # No close(): the process is gone. A restarted executor sweeps the dead one's sandboxes.
    pool._filler.shutdown(wait=True, cancel_futures=True)
    assert len(remove_orphans(docker_client, executor_id=crashed)) >= 2
    assert sandboxes_of(docker_client, crashed) == []
    assert list((tmp_path / "sb").iterdir()) == []


def test_an_executor_hands_each_task_a_fresh_sandbox_and_leaves_none_behind(
    engine: Engine,
    project: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    sandbox_image: str,
) -> None:
    first, second = add_task(engine), add_task(engine)
    script = [
        reply(tool_call("bash", {"command": LEAVE_BEHIND})),
        reply(tool_call("finish", {"summary": "left things behind"})),
        reply(tool_call("bash", {"command": LOOK})),
        reply(tool_call("finish", {"summary": "looked"})),
    ]
    repo = RepoConfig(path=project, base_branch="main", review={"enabled": False})
    with ScriptedLLM(script) as llm:
        run_executor(
            engine=engine,
            config=Config(repos={"app": repo}),
            home=tmp_path / "home",
            make_llm=lambda: LLMClient(base_url=llm.base_url, api_key=None, model="m"),
            concurrency=1,
            drain=True,
            log=lambda _: None,
        )
    assert task(engine, first).state is State.AWAITING_APPROVAL
    assert task(engine, second).state is State.AWAITING_APPROVAL
    looked = next(m["content"] for m in llm.requests[3]["messages"] if m["role"] == "tool")
    assert "calc.py" in looked  # the second task's own clone
    assert "sleep 300" not in looked and "left" not in looked
    # Spares and used sandboxes are gone, and their folders; the checkouts are kept.
    assert sandboxes_of(docker_client, installation_id(engine) + ".") == []
    assert list((tmp_path / "home" / "sandboxes").iterdir()) == []
    workspaces = tmp_path / "home" / "workspaces"
    assert sorted(p.name for p in workspaces.iterdir()) == [f"task-{first}", f"task-{second}"]
