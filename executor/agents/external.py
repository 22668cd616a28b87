"""External agents: a preset (`agent: aider | codex | claude-code`, executor/agents/presets.py)
or any command (`agent: command`) run headless inside the sandbox; its output streams into the
task log. A preset's output is also read line by line for turns, tokens and cost (`on_line`),
which may stop the run at a limit: the process is killed by the next command's cleanup and the
work so far stays in the workspace for the hand-back."""

from __future__ import annotations

import base64
import shlex
import time
from collections.abc import Callable, Mapping
from string import Template
from typing import Any

from executor.agents.loop import NeedsHuman
from executor.agents.presets import PROMPT_FILE
from executor.config.defaults import WATCH_INTERVAL_S
from executor.config.schema import Limits
from executor.sandbox.container import Sandbox
from storage.models import Task

LOG, EXIT = (f"/tmp/nightcrew-agent.{ext}" for ext in ("log", "exit"))
MARK = "\n--nightcrew-exit:"
Record = Callable[[int, str, dict[str, Any]], None]
OnLine = Callable[[str], None]  # raises NeedsHuman to stop the agent (a limit)


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
    return run_external(sandbox, command, task, limits, check, record, shown=template)


def run_external(
    sandbox: Sandbox,
    command: str,
    task: Task,
    limits: Limits,
    check: Callable[[], None],
    record: Record,
    *,
    shown: str,
    prompt: str | None = None,
    env: Mapping[str, str] | None = None,
    on_line: OnLine | None = None,
) -> str:
    """Run `command` detached in the sandbox and follow it to its end; `prompt` is written to
    PROMPT_FILE first (by the host: no shell ever sees its text), `env` are the preset's
    defaults under the repo's `agent_env`. `shown` is what the log says was run."""
    assert task.id is not None
    script = f"({command}) > {LOG} 2>&1; echo $? > {EXIT}"
    sandbox.exec(f"rm -f {LOG} {EXIT} {PROMPT_FILE}")
    if prompt is not None:
        encoded = base64.b64encode(prompt.encode()).decode()
        wrote = sandbox.exec(f"printf %s {encoded} | base64 -d > {PROMPT_FILE}")
        if not wrote.ok:
            raise NeedsHuman(f"cannot hand the agent its prompt: {wrote.output.strip()[-300:]}")
    # In a session of its own, with the repo's agent_env: it outlives this call and is polled
    # below; every other process left behind by a command still dies with that command.
    started = sandbox.spawn(script, env=env)
    if not started.ok:
        raise NeedsHuman(f"the agent command did not start: {started.output.strip()}")
    if sandbox.agent_session is None:  # the next command's cleanup ends it as a stray
        raise NeedsHuman("the agent command did not start in a session of its own")
    record(task.id, "agent_command", {"command": shown})  # not the filled-in secrets
    try:
        return _follow(sandbox, task, limits, check, record, on_line)
    finally:
        sandbox.release_session()  # still running (a limit, a cancel): the next command ends it


def _follow(
    sandbox: Sandbox,
    task: Task,
    limits: Limits,
    check: Callable[[], None],
    record: Record,
    on_line: OnLine | None,
) -> str:
    """Poll the spawned agent: stream its log into the task's events until it exits."""
    assert task.id is not None and sandbox.agent_session is not None
    # The script's shell leads the session, so its id is known from the start (a pid file
    # might not be written yet at the first poll). The exit file is read again after the
    # shell is found gone: it may have written it and ended between the two looks.
    status_of = (
        f"cat {EXIT} 2>/dev/null || {{ kill -0 {sandbox.agent_session} 2>/dev/null && "
        f"echo running; }} || cat {EXIT} 2>/dev/null || echo gone"
    )
    offset, tail, partial = 0, "", ""
    deadline = time.monotonic() + limits.max_wall_minutes * 60
    while True:
        check()  # raises Cancelled
        # The log's size, as the sandbox sees it, is the offset's authority: the text we get
        # back may be decoded with replacements or cut, the byte count is not.
        poll = sandbox.exec(
            f"size=$(wc -c < {LOG} 2>/dev/null || echo {offset}); "
            f"tail -c +{offset + 1} {LOG} 2>/dev/null | head -c $((size - {offset})); "
            f"printf %s '{MARK}'; echo $size; {status_of}"
        )
        chunk, _, trailer = poll.output.rpartition(MARK)
        size, _, status = trailer.strip().partition("\n")
        status = status.strip()
        if chunk:
            tail = (tail + chunk)[-4000:]
            record(task.id, "agent_output", {"text": chunk[-4000:]})
        if size.strip().isdigit():
            offset = int(size)
        if on_line is not None:
            *lines, partial = (partial + chunk).split("\n")
            finished = status.isdigit() or status == "gone"
            if finished and partial:
                lines, partial = [*lines, partial], ""
            partial = partial[-1_000_000:]  # a line without end must not eat the host's memory
            for line in lines:
                on_line(line)  # may raise NeedsHuman: a limit stops the agent here
        if status == "gone":
            raise NeedsHuman("the agent command died without an exit status")
        if status.isdigit():
            if status != "0":
                raise NeedsHuman(f"the agent command exited with code {status}")
            return tail.strip()[-2000:] or "the agent command finished without output"
        if time.monotonic() > deadline:
            raise NeedsHuman(f"time limit reached ({limits.max_wall_minutes:g} minutes)")
        time.sleep(WATCH_INTERVAL_S / 2)
