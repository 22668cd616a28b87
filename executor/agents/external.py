"""External agents (`agent: command`): a command such as Claude Code, Codex CLI or aider in
headless mode runs inside the sandbox; its output streams into the task log. Its own limits
are the wall time and cancellation: nightcrew cannot see its turns or tokens."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from string import Template
from typing import Any

from executor.agents.loop import NeedsHuman
from executor.config.defaults import WATCH_INTERVAL_S
from executor.config.schema import Limits
from executor.sandbox.container import Sandbox
from storage.models import Task

LOG, EXIT, PID = (f"/tmp/nightcrew-agent.{ext}" for ext in ("log", "exit", "pid"))
MARK = "\n--nightcrew-exit:"
Record = Callable[[int, str, dict[str, Any]], None]


def run_command_agent(
    sandbox: Sandbox,
    template: str,
    task: Task,
    limits: Limits,
    check: Callable[[], None],
    record: Record,
    prompt: str | None = None,
) -> str:
    """Run the repo's agent command for `task`; return the tail of its output as summary.
    `$prompt` (the task's, or `prompt` for a revision round), `$task_id` and `$branch` in the
    template are replaced, shell-quoted."""
    assert task.id is not None
    command = Template(template).safe_substitute(
        prompt=shlex.quote(prompt or task.prompt),
        task_id=task.id,
        branch=shlex.quote(task.branch or ""),
    )
    script = f"echo $$ > {PID}; ({command}) > {LOG} 2>&1; echo $? > {EXIT}"
    sandbox.exec(f"rm -f {LOG} {EXIT} {PID}")
    # In a session of its own, with the repo's agent_env: it outlives this call and is polled
    # below; every other process left behind by a command still dies with that command.
    started = sandbox.spawn(script)
    if not started.ok:
        raise NeedsHuman(f"the agent command did not start: {started.output.strip()}")
    record(task.id, "agent_command", {"command": template})  # not the filled-in secrets
    try:
        return _follow(sandbox, task, limits, check, record)
    finally:
        sandbox.release_session()  # still running (a limit, a cancel): the next command ends it


def _follow(
    sandbox: Sandbox, task: Task, limits: Limits, check: Callable[[], None], record: Record
) -> str:
    """Poll the spawned agent: stream its log into the task's events until it exits."""
    assert task.id is not None
    offset, tail = 0, ""
    deadline = time.monotonic() + limits.max_wall_minutes * 60
    while True:
        check()  # raises Cancelled
        # The log's size, as the sandbox sees it, is the offset's authority: the text we get
        # back may be decoded with replacements or cut, the byte count is not.
        poll = sandbox.exec(
            f"size=$(wc -c < {LOG} 2>/dev/null || echo {offset}); "
            f"tail -c +{offset + 1} {LOG} 2>/dev/null | head -c $((size - {offset})); "
            f"printf %s '{MARK}'; echo $size; cat {EXIT} 2>/dev/null"
            f" || {{ kill -0 $(cat {PID}) 2>/dev/null && echo running; }} || echo gone"
        )
        chunk, _, trailer = poll.output.rpartition(MARK)
        size, _, status = trailer.strip().partition("\n")
        status = status.strip()
        if chunk:
            tail = (tail + chunk)[-4000:]
            record(task.id, "agent_output", {"text": chunk[-4000:]})
        if size.strip().isdigit():
            offset = int(size)
        if status == "gone":
            raise NeedsHuman("the agent command died without an exit status")
        if status.isdigit():
            if status != "0":
                raise NeedsHuman(f"the agent command exited with code {status}")
            return tail.strip()[-2000:] or "the agent command finished without output"
        if time.monotonic() > deadline:
            raise NeedsHuman(f"time limit reached ({limits.max_wall_minutes:g} minutes)")
        time.sleep(WATCH_INTERVAL_S / 2)
