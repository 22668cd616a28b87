"""kill -9 of the executor at several points of a task's life: after each restart the task
carries on from its last durable point, no sandbox is left behind, nothing merges twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine

from bot import actions
from storage.db import transaction
from storage.lifecycle import State
from storage.models import utcnow
from storage.tasks import events
from tests.conftest import git
from tests.docker_fixtures import running_in
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.waiting import wait_for
from tests.worker_fixtures import add_task, our_sandboxes, task

HEARTBEAT_TIMEOUT_S = 2.0
# Long enough for the test's polls (a `docker top` per sandbox) to see it on a loaded box:
# at 4 s, one run missed the checks after the rebase entirely.
SLOW_CHECK = "sleep 8 && python3 -m unittest -q 2>&1"


class Executor:
    """`nightcrew executor` as a real process, killed the hard way."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        nightcrew = str(Path(sys.executable).with_name("nightcrew"))
        self.proc = subprocess.Popen(
            [nightcrew, "executor"],
            cwd=self.cwd,
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        # A graceful stop lets the work in hand finish its step (a hand-back, a merge): on a
        # loaded 2-core machine that took over 60 s once.
        out, _ = self.proc.communicate(timeout=150)
        return out


@pytest.fixture
def executor(
    project: Path, tmp_path: Path, db_url: str, sandbox_image: str
) -> Iterator[Callable[[str], Executor]]:
    config = tmp_path / "nightcrew.yaml"
    config.write_text(
        f"repos:\n  app:\n    path: {project}\n    base_branch: main\n"
        f"    checks: ['{SLOW_CHECK}']\n    review: {{enabled: false}}\n"
    )
    started: list[Executor] = []

    def make(base_url: str) -> Executor:
        env = {
            **os.environ,
            "NIGHTCREW_DATABASE_URL": db_url,
            "NIGHTCREW_HOME": str(tmp_path / "home"),
            "NIGHTCREW_CONFIG": str(config),
            "NIGHTCREW_MODEL": "scripted-model",
            "OPENAI_BASE_URL": base_url,
            "NIGHTCREW_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
        }
        ex = Executor(env, project)
        ex.start()
        started.append(ex)
        return ex

    yield make
    for ex in started:
        if ex.proc and ex.proc.poll() is None:
            ex.proc.kill()


def stale(engine: Engine, task_id: int) -> bool:
    """The killed executor's claim on the task has gone stale: the reaper may take it."""
    beat = task(engine, task_id).heartbeat_at
    return beat is None or utcnow() - beat > timedelta(seconds=HEARTBEAT_TIMEOUT_S)


def test_sigkill_at_several_points_loses_nothing_and_merges_once(
    engine: Engine,
    executor: Callable[[str], Executor],
    project: Path,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    task_id = add_task(engine)
    fix = reply(
        tool_call("edit_file", {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"})
    )
    finish = reply(tool_call("finish", {"summary": "fixed add()"}))
    script = [
        reply(tool_call("bash", {"command": "sleep 120"})),  # 1st run: killed in here
        fix,
        finish,  # 2nd run: killed while the checks run
        finish,  # 3rd run: the fix is on the branch; checks pass
    ]

    def running(command: str) -> bool:
        return running_in(our_sandboxes(docker_client, engine), command)

    def kill(ex: Executor) -> None:
        ex.kill()
        wait_for(lambda: stale(engine, task_id), 30, "the killed executor's heartbeat to go stale")

    with ScriptedLLM(script) as llm:
        # 1. Killed while the agent's command runs: its sandbox is left behind.
        ex = executor(llm.base_url)
        wait_for(lambda: running("sleep 120"), 60, "the agent's long command")
        kill(ex)
        assert our_sandboxes(docker_client, engine), "a kill -9 leaves its sandbox behind"

        # 2. Restarted: the leftover is removed, the task resumes; killed during the checks.
        ex = executor(llm.base_url)
        wait_for(lambda: running("sleep 8"), 60, "the checks to run")
        assert task(engine, task_id).state is State.CHECKING
        kill(ex)

        # 3. Restarted: it resumes from the branch and parks for approval.
        ex = executor(llm.base_url)
        wait_for(lambda: task(engine, task_id).state is State.AWAITING_APPROVAL, 60, "the approval")
        resumed = [
            r
            for r in llm.requests
            if any("You worked on this task before" in str(m.get("content")) for m in r["messages"])
        ]
        assert resumed, "a restarted task is told its earlier work is on the branch"

        # 4. Approved while the base moved on: killed during the checks after the rebase.
        (project / "NOTES.md").write_text("unrelated\n")
        git(project, "add", "NOTES.md")
        git(project, "commit", "-qm", "meanwhile on main")
        with transaction(engine) as s:
            actions.approve(s, task_id, actor="U1")

        def rebased() -> bool:
            with transaction(engine) as s:
                return any(e.kind == "rebase" for e in events(s, task_id))

        def where_it_is() -> str:
            with transaction(engine) as s:
                kinds = [e.kind for e in events(s, task_id)][-8:]
            return f"the checks after the rebase; task is {task(engine, task_id).state}, {kinds}"

        wait_for(lambda: rebased() and running("sleep 8"), 60, where_it_is)
        kill(ex)

        # 5. Restarted: the merge is taken over and done once.
        ex = executor(llm.base_url)
        wait_for(lambda: task(engine, task_id).state is State.MERGED, 60, "the merge")
        ex.stop()
    merged = task(engine, task_id)
    with transaction(engine) as s:
        checked = {e.payload["head"] for e in events(s, task_id) if e.kind == "checks_passed"}
    assert merged.head_commit in checked  # the rebased code that merged was checked
    assert git(project, "show", "main:calc.py").endswith("return a + b")
    assert git(project, "show", "main:NOTES.md") == "unrelated"
    log = git(project, "log", "--format=%B", "main")
    assert log.count(f"Nightcrew-Task: {task_id}") == 1
    assert git(project, "rev-parse", "main") == merged.merge_commit
    assert our_sandboxes(docker_client, engine) == []  # the killed executors' spares too
    assert list((tmp_path / "home" / "sandboxes").iterdir()) == []  # and their folders
