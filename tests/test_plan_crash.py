"""kill -9 of a real executor process while a plan's dependent waits: after the restart the
prerequisite resumes, merges once, and the dependent is queued and started exactly once.
(kill -9 during plan queueing is in tests/test_plans.py: the plan is queued whole or not.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import docker
from sqlalchemy import Engine

from bot import actions
from storage.db import transaction
from storage.lifecycle import State
from storage.plan_draft import PlanDraft
from storage.plans import create_plan, queue_plan
from storage.tasks import events
from tests.conftest import git
from tests.docker_fixtures import running_in
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.test_crash import Executor, executor  # noqa: F401  (the process fixture)
from tests.waiting import wait_for
from tests.worker_fixtures import our_sandboxes, task

PLAN = PlanDraft.model_validate(
    {
        "title": "fix then note",
        "tasks": [
            {"prompt": "fix add()", "allowed_paths": ["calc.py"]},
            {"prompt": "note the fix", "allowed_paths": ["NOTES.md"], "after": [1]},
        ],
    }
)


def test_kill_9_while_a_dependent_waits_loses_nothing_and_starts_nothing_twice(
    engine: Engine,
    executor: Callable[[str], Executor],  # noqa: F811
    project: Path,
    docker_client: docker.DockerClient,
) -> None:
    with transaction(engine) as s:
        plan = create_plan(s, repo="app", spec="fix", draft=PLAN, requester="U1")
        first, second = [t.id or 0 for t in queue_plan(s, plan.id or 0, actor="U1")]
    script = [
        reply(tool_call("bash", {"command": "sleep 120"})),  # killed in here
        reply(
            tool_call("edit_file", {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"})
        ),
        reply(tool_call("finish", {"summary": "fixed add()"})),
        reply(tool_call("write_file", {"path": "NOTES.md", "content": "add() adds\n"})),
        reply(tool_call("finish", {"summary": "noted"})),
    ]
    with ScriptedLLM(script) as llm:
        ex = executor(llm.base_url)
        wait_for(
            lambda: running_in(our_sandboxes(docker_client, engine), "sleep 120"),
            60,
            "the long command running in the sandbox",
        )
        ex.kill()
        assert task(engine, second).state is State.WAITING
        ex = executor(llm.base_url)
        wait_for(lambda: task(engine, first).state is State.AWAITING_APPROVAL, 60, "approval")
        assert task(engine, second).state is State.WAITING  # parked for approval: not merged
        with transaction(engine) as s:
            actions.approve(s, first, actor="U1")
        wait_for(
            lambda: task(engine, second).state is State.AWAITING_APPROVAL,
            90,
            "the dependent's run",
        )
        ex.stop()
    with transaction(engine) as s:
        moves = [
            (e.payload["from"], e.payload["to"]) for e in events(s, second) if e.kind == "state"
        ]
    assert moves.count(("waiting", "queued")) == 1
    assert moves.count(("queued", "preparing")) == 1  # started once
    merged = task(engine, first)
    assert merged.state is State.MERGED
    assert git(project, "log", "--format=%B", "main").count(f"Nightcrew-Task: {first}") == 1
    git(
        project,
        "merge-base",
        "--is-ancestor",
        merged.merge_commit or "",
        task(engine, second).base_commit or "",
    )
