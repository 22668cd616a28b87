"""The host stays safe from the agent's files and processes. Each test is a hostile scripted
agent: processes that try to outlive their command, setuid/setgid files, a workspace opened
to everyone, a write that would fill the disk. Each asserts the attack fails and the agent's
committed work still reaches its branch."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from executor.git import workspace
from storage.lifecycle import State
from tests.conftest import git
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.worker_fixtures import RunWorker, add_task, task

COMMIT = "echo {text} > work.txt && git add work.txt && git commit -qm 'agent work'"


def bash(command: str) -> object:
    return reply(tool_call("bash", {"command": command}))


def finish() -> object:
    return reply(tool_call("finish", {"summary": "done"}))


def tool_results(llm: ScriptedLLM) -> list[str]:
    last = llm.requests[-1]["messages"]
    return [m["content"] for m in last if m["role"] == "tool"]


def test_processes_that_escape_a_command_die_with_it_and_the_work_is_kept(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    task_id = add_task(engine)
    escape = (
        # daemons: a new session, nohup, a double fork, and a nested `timeout` (its own group)
        "setsid sh -c 'while :; do echo junk >> /workspace/junk.txt; sleep 0.2; done' & "
        "nohup sleep 1001 >/dev/null 2>&1 & "
        "(sh -c 'sleep 1002 &' &); "
        "timeout 1000 sleep 1003 & "
        "echo started"
    )
    script = [
        bash(COMMIT.format(text="kept")),
        bash(escape),
        # Past its timeout: the nested timeout's sleep is in a group of its own.
        bash("timeout 1000 sleep 1004 & setsid sleep 1005 & sleep 60"),
        bash(
            # Under load the daemon may be killed before its first line: no file is 0 lines.
            "a=$(cat junk.txt 2>/dev/null | wc -l); sleep 1; "
            "b=$(cat junk.txt 2>/dev/null | wc -l); "
            "ps -eo args | grep -c '^sleep 100'; echo $((b - a))"
        ),
        finish(),
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm, command_timeout_s=2).work(drain=True)
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, done.reason
    results = tool_results(llm)
    assert "timed out after 2 s" in results[2]
    assert results[3].split()[-2:] == ["0", "0"], results[3]  # none left running
    assert git(project, "show", f"{done.branch}:work.txt") == "kept"


def test_setuid_files_never_reach_the_host(
    engine: Engine, make_worker: RunWorker, project: Path, tmp_path: Path
) -> None:
    task_id = add_task(engine)
    plant = (
        "cp /bin/sh suid-sh && chmod 6755 suid-sh && mkdir sgid && chmod 2777 sgid && "
        "cp /bin/sh sgid/x && chmod g+s sgid/x && git add -A && git commit -qm plant && "
        "ls -l suid-sh && grep ' /workspace ' /proc/self/mountinfo"
    )
    with ScriptedLLM([bash(plant), finish()]) as llm:
        make_worker(llm).work(drain=True)
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, done.reason
    planted = tool_results(llm)[0]
    assert "-rwsr-sr-x" in planted  # the agent did make them...
    mount_options = planted.splitlines()[-1].split()[5].split(",")
    assert {"nosuid", "nodev"} <= set(mount_options), planted  # ...on a nosuid mount
    home = tmp_path / "home"
    flagged = [
        path
        for path in home.rglob("*")
        if not path.is_symlink() and path.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    ]
    assert flagged == []
    assert (workspace.checkout_path(home, task_id) / "suid-sh").is_file()  # kept, defused
    assert git(project, "ls-tree", done.branch, "suid-sh").startswith("100755")


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A folder every host user may enter (pytest's own tmp folders are private already)."""
    parent = Path(tempfile.mkdtemp(prefix="nightcrew-open-"))
    parent.chmod(0o755)
    yield parent
    workspace.remove(parent)
    shutil.rmtree(parent, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    assert os.geteuid() == 0, "needs root to act as another user"
    setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run([*setpriv, *argv], capture_output=True, text=True, timeout=10)


def test_task_folders_are_not_readable_by_other_host_users(
    engine: Engine, make_worker: RunWorker, open_parent: Path
) -> None:
    task_id = add_task(engine)
    opened = "echo private > notes.txt && chmod -R a+rwX /workspace && chmod 777 /workspace"
    with ScriptedLLM([bash(opened), bash(COMMIT.format(text="kept")), finish()]) as llm:
        worker = make_worker(llm)
        worker = dataclasses.replace(worker, home=open_parent / "home", sandboxes=None)
        worker.work(drain=True)
    assert task(engine, task_id).state is State.AWAITING_APPROVAL
    home = open_parent / "home"
    checkout = workspace.checkout_path(home, task_id)
    assert (checkout / "notes.txt").read_text() == "private\n"
    for target in (checkout / "notes.txt", checkout, home / "workspaces", home / "sandboxes"):
        seen = as_nobody("ls", "-l", str(target))
        assert seen.returncode != 0 and "Permission denied" in seen.stderr, (target, seen)
    assert as_nobody("cat", str(checkout / "notes.txt")).returncode != 0


def test_a_runaway_write_fails_the_task_on_its_disk_quota(
    engine: Engine, make_worker: RunWorker, project: Path, tmp_path: Path
) -> None:
    task_id = add_task(engine)
    flood = "dd if=/dev/zero of=flood bs=1M count=300 2>&1 | tail -1; ls -la flood"
    script = [bash(COMMIT.format(text="kept")), bash(flood), bash("echo more"), finish()]
    with ScriptedLLM(script) as llm:
        make_worker(llm, disk="64m").work(drain=True)
    failed = task(engine, task_id)
    assert failed.state is State.FAILED, failed.reason
    assert "disk quota" in (failed.reason or "") and "64m" in (failed.reason or "")
    assert llm.remaining == 2  # the agent got no turn after the flood
    # Nothing on the host grew past the quota; the committed work is on the branch.
    assert git(project, "show", f"{failed.branch}:work.txt") == "kept"
    sizes = [p.stat().st_size for p in (tmp_path / "home").rglob("flood") if p.is_file()]
    assert all(size <= 64 * 1024**2 for size in sizes), sizes
