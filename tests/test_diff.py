"""`nightcrew diff`: the task's full patch, exact in a pipe (`git apply` takes it on the base
branch) and harmless on a terminal, whatever the agent wrote. A real task run by a real worker
(real Docker, real git, scripted model), then the real `nightcrew` process."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sqlalchemy import Engine

from storage.lifecycle import State
from tests.conftest import git
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.test_cli import NIGHTCREW
from tests.test_cli_output import env_for, run_in_terminal
from tests.worker_fixtures import RunWorker, add_task, task

# A hostile file: escape sequences that would retitle the window and clear the screen, a bell,
# and a CRLF line that a "cleaned" patch would no longer apply with.
HOSTILE = "title\x1b]0;pwned\x07\n\x1b[2Jcleared\nwindows line\r\n"


def test_diff_applies_on_the_base_branch_and_is_harmless_on_a_terminal(
    engine: Engine, db_url: str, make_worker: RunWorker, project: Path, tmp_path: Path
) -> None:
    task_id = add_task(engine)
    edit = {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"}
    script = [
        reply(tool_call("write_file", {"path": "notes.txt", "content": HOSTILE})),
        reply(tool_call("edit_file", edit)),
        reply(tool_call("finish", {"summary": "fixed"})),
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm).work(drain=True)
    parked = task(engine, task_id)
    assert parked.state is State.AWAITING_APPROVAL, parked.reason
    home = tmp_path / "home"
    env = env_for(home, NIGHTCREW_DATABASE_URL=db_url)

    piped = subprocess.run(
        [NIGHTCREW, "diff", str(task_id)], cwd=project, env=env, capture_output=True, timeout=60
    )
    assert piped.returncode == 0, piped.stderr
    assert b"+title\x1b]0;pwned\x07" in piped.stdout  # byte for byte: it is the patch
    check = subprocess.run(
        ["git", "apply", "--check", "-"], cwd=project, input=piped.stdout, capture_output=True
    )
    assert check.returncode == 0, check.stderr  # on main, where the task started
    applied = subprocess.run(["git", "apply", "--index", "-"], cwd=project, input=piped.stdout)
    assert applied.returncode == 0
    assert (project / "notes.txt").read_bytes() == HOSTILE.encode()
    assert git(project, "diff", "--stat", parked.head_commit or "") == ""  # the task's tree
    shown = run_in_terminal(
        project, home, "show", str(task_id), "--diff", NIGHTCREW_DATABASE_URL=db_url
    )
    assert "notes.txt" in shown and "cleared" in shown and "a + b" in shown
    assert "\x1b]" not in shown and "\x1b[2J" not in shown and "\x07" not in shown
    assert "\x1b[" in shown  # coloured, by us
