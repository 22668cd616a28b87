"""Hostile agents against the merge's bookkeeping: which task is merged, and at which commit,
comes from what nightcrew recorded in the database, never from text an agent wrote (commit
messages, trailers, identities, its summary); and a crash between the local merge and the
push never leaves a task reported merged while the remote lacks it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import Engine

from bot import actions
from storage.db import transaction
from storage.lifecycle import State
from tests.conftest import git
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.test_crash import HEARTBEAT_TIMEOUT_S, Executor, stale
from tests.waiting import wait_for
from tests.worker_fixtures import RunWorker, add_task, task

OUR_IDENTITY = "-c user.name=nightcrew -c user.email=nightcrew@nightcrew.invalid"


def bash(command: str):
    return reply(tool_call("bash", {"command": command}))


def finish(summary: str = "done"):
    return reply(tool_call("finish", {"summary": summary}))


def fix():
    return reply(
        tool_call("edit_file", {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"})
    )


def approve(engine: Engine, task_id: int) -> None:
    with transaction(engine) as s:
        actions.approve(s, task_id, actor="U1")


# Task 1's agent claims to be task 2's merge: in a commit of its own, with nightcrew's
# committer identity, landing on the base's first-parent line by the ff policy; or in its
# summary, which a merge commit made by nightcrew itself quotes.
FORGED_COMMIT = f"git {OUR_IDENTITY} commit -qam 'fix add' -m 'Nightcrew-Task: 2'"
ATTACKS = {
    "trailer-in-own-commit-ff": ("ff", [fix(), bash(FORGED_COMMIT), finish()]),
    "trailer-in-summary-merge": ("merge", [fix(), finish("fixed add()\n\nNightcrew-Task: 2")]),
    "trailer-in-summary-squash": ("squash", [fix(), finish("fixed add()\n\nNightcrew-Task: 2")]),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_one_agent_cannot_mark_another_task_merged(
    engine: Engine, make_worker: RunWorker, project: Path, attack: str
) -> None:
    policy, first_script = ATTACKS[attack]
    options = {"merge": {"policy": policy}}
    first, second = add_task(engine, "first"), add_task(engine, "second")
    assert second == 2
    add_x = bash("echo x > x.txt && git add x.txt && git commit -qm 'add x'")
    with ScriptedLLM([*first_script, add_x, finish()]) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    assert [task(engine, i).state for i in (first, second)] == [State.AWAITING_APPROVAL] * 2
    approve(engine, first)
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    assert task(engine, first).state is State.MERGED
    assert "Nightcrew-Task: 2" in git(project, "log", "--format=%B", "main")  # the forgery landed
    forged_tip = git(project, "rev-parse", "main")

    approve(engine, second)
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    merged = task(engine, second)
    assert merged.state is State.MERGED, merged.reason
    # Task 2 really landed: its own change is on main, at the commit recorded for it.
    assert git(project, "show", "main:x.txt") == "x"
    assert merged.merge_commit == git(project, "rev-parse", "main") != forged_tip
    assert git(project, "show", "main:calc.py").endswith("a + b")  # task 1's work is kept


# --- a crash between the local merge and the push ----------------------------------------------

# Kills the executor the hard way from inside the push, once: the remote's own hook runs while
# the executor waits for its push. `pre-receive` = before the remote takes the commit (a
# `path:` repo pushes to origin after moving its base), `post-receive` = after it took it (a
# `url:` repo pushes first, then moves its base).
KILLER = """#!/bin/sh
if [ -f "{armed}" ]; then rm -f "{armed}"; kill -9 "$(cat {pidfile})"; sleep 5; exit 1; fi
exit 0
"""


# Each repo kind once, each on one database: the database's part (the merge's bookkeeping
# surviving the kill) is the same for both kinds, and every run is a real kill and resume.
@pytest.mark.parametrize(
    ("db_url", "kind", "hook"),
    [("postgresql", "path-with-origin", "pre-receive"), ("sqlite", "url", "post-receive")],
    indirect=["db_url"],
)
def test_a_kill_between_merge_and_push_pushes_on_resume(
    engine: Engine,
    make_worker: RunWorker,
    project: Path,
    tmp_path: Path,
    db_url: str,
    sandbox_image: str,
    kind: str,
    hook: str,
) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(project), str(remote))
    if kind == "url":
        options: dict = {"path": None, "url": f"file://{remote}"}
        where = f"url: file://{remote}"
    else:
        git(project, "remote", "add", "origin", str(remote))
        options = {}
        where = f"path: {project}"
    remote_before = git(remote, "rev-parse", "main")
    task_id = add_task(engine)
    with ScriptedLLM([fix(), finish()]) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    assert task(engine, task_id).state is State.AWAITING_APPROVAL
    approve(engine, task_id)

    armed, pidfile = tmp_path / "armed", tmp_path / "executor.pid"
    (remote / "hooks" / hook).write_text(KILLER.format(armed=armed, pidfile=pidfile))
    (remote / "hooks" / hook).chmod(0o755)
    armed.touch()
    config = tmp_path / "nightcrew.yaml"
    config.write_text(
        f"repos:\n  app:\n    {where}\n    base_branch: main\n    review: {{enabled: false}}\n"
    )
    env = {
        **os.environ,
        "NIGHTCREW_DATABASE_URL": db_url,
        "NIGHTCREW_HOME": str(tmp_path / "home"),
        "NIGHTCREW_CONFIG": str(config),
        "NIGHTCREW_MODEL": "scripted-model",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # the merge needs no model
        "NIGHTCREW_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
    }
    killed = Executor(env, project)
    killed.start()
    assert killed.proc is not None
    pidfile.write_text(str(killed.proc.pid))
    killed.proc.wait(60)
    assert killed.proc.returncode == -9 and not armed.exists(), "killed inside the push"
    wait_for(lambda: stale(engine, task_id), 30, "the killed executor's heartbeat to go stale")
    if kind == "path-with-origin":  # merged locally, the remote does not have it
        assert git(remote, "rev-parse", "main") == remote_before
    assert task(engine, task_id).state is State.MERGING  # not reported merged

    resumed = Executor(env, project)
    resumed.start()
    try:
        wait_for(lambda: task(engine, task_id).state is not State.MERGING, 60, "the merge")
    finally:
        out = resumed.stop()
    merged = task(engine, task_id)
    assert merged.state is State.MERGED, (merged.reason, out)
    assert git(remote, "rev-parse", "main") == merged.merge_commit  # the remote has it
    assert git(remote, "show", "main:calc.py").endswith("a + b")
    log = git(remote, "log", "--format=%B", "main")
    assert log.count(f"Nightcrew-Task: {task_id}") == 1  # merged once
