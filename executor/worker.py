"""A worker: claims queued tasks and runs each in its own sandbox, on its own branch.

`work()` reads as rq's: stop requested? → maintenance if due → claim (None = idle) →
perform → repeat. `perform()` prepares the workspace and sandbox, runs the agent, hands the
work back to the canonical repo whatever happened, and records one outcome."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
from sqlalchemy import Engine
from sqlmodel import col, select

from executor import workspace
from executor.agent import Agent, Cancelled, Finished, NeedsHuman, Turn, render
from executor.config import Config, RepoConfig
from executor.defaults import IDLE_POLL_S, WATCH_INTERVAL_S
from executor.external import run_command_agent
from executor.gitsafe import GitError
from executor.llm import LLMClient, LLMError
from executor.pricing import cost_usd
from executor.sandbox import Sandbox, SandboxError
from executor.tools import describe
from executor.workspace import Workspace, WorkspaceError
from storage.db import transaction
from storage.defaults import HEARTBEAT_TIMEOUT_S
from storage.errors import Conflict
from storage.lifecycle import CLOSED, State
from storage.models import Task
from storage.queue import claim_next, heartbeat, reap_stale
from storage.tasks import get_task, record, take_nudges, transition

# Bytecode caches are build litter that the leftover commit would otherwise sweep up.
SANDBOX_ENV = {"PYTHONDONTWRITEBYTECODE": "1"}
WORK_FAILURES = (LLMError, SandboxError, WorkspaceError, GitError)


@dataclass
class Outcome:
    state: State
    reason: str | None = None
    summary: str | None = None


@dataclass
class Worker:
    engine: Engine
    config: Config
    home: Path
    docker: docker.DockerClient
    llm: LLMClient
    worker_id: str
    executor_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    _next_maintenance: float = 0.0

    def work(self, *, drain: bool = False) -> int:
        """Run tasks until `stop` is set (or, with `drain`, the queue is empty)."""
        done = 0
        while not self.stop.is_set():
            self.maintain()
            task = self.claim()
            if task is None:
                if drain:
                    break
                self.stop.wait(IDLE_POLL_S)
                continue
            self.perform(task)
            done += 1
        return done

    def maintain(self) -> None:
        if time.monotonic() < self._next_maintenance:
            return
        self._next_maintenance = time.monotonic() + HEARTBEAT_TIMEOUT_S / 3
        with transaction(self.engine) as s:
            reap_stale(s)
        self.prune_workspaces()

    def prune_workspaces(self) -> None:
        """Remove checkouts of tasks closed since (rejected or cancelled while waiting, or
        merged): their branches stay in the canonical repo."""
        root = self.home / "workspaces"
        if not root.is_dir():
            return
        ids = {int(p.name[5:]): p for p in root.iterdir() if p.name[5:].isdigit()}
        if not ids:
            return
        with transaction(self.engine) as s:
            closed = s.exec(
                select(Task.id).where(col(Task.id).in_(ids), col(Task.state).in_(list(CLOSED)))
            ).all()
        for task_id in closed:
            with contextlib.suppress(WorkspaceError, OSError):
                workspace.remove(ids[task_id])

    def claim(self) -> Task | None:
        with transaction(self.engine) as s:
            return claim_next(s, self.worker_id)

    def perform(self, task: Task) -> None:
        assert task.id is not None and task.branch is not None
        repo = self.config.repos.get(task.repo)
        if repo is None:
            self._finish(task.id, Outcome(State.FAILED, f"repo {task.repo!r} is not configured"))
            return
        watch = Watch(self, task.id)
        watch.start()
        ws: Workspace | None = None
        sandbox: Sandbox | None = None
        fields: dict[str, Any] = {}
        try:
            ws = workspace.prepare(self.home, task.repo, repo, task.id, task.branch)
            fields["base_commit"] = ws.base_commit
            sandbox = Sandbox.start(
                self.docker,
                task_id=str(task.id),
                executor_id=self.executor_id,
                workspace=ws.path,
                image=repo.image,
                limits=repo.limits,
                network=repo.network,
                read_only_root=repo.read_only_root,
                env=SANDBOX_ENV,
            )
            watch.sandbox = sandbox
            outcome = self._run(task, repo, ws, sandbox, watch)
        except WORK_FAILURES as exc:
            outcome = Outcome(State.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            watch.sandbox = None  # from here on a cancel must not interrupt the hand-back
        if watch.lost:
            outcome = Outcome(State.QUEUED, "lost the claim")  # the reaper already moved it
        try:
            fields |= self._hand_back(task, ws, sandbox)
        except WORK_FAILURES as exc:
            if outcome.state is State.AWAITING_APPROVAL:
                outcome = Outcome(State.FAILED, f"could not save the work: {exc}")
        finally:
            watch.stop()
            if sandbox is not None:
                sandbox.remove()
        if not watch.lost:
            self._finish(task.id, outcome, **fields)
        if ws is not None and outcome.state in (State.CANCELLED, State.REJECTED):
            workspace.remove(ws)

    def _run(
        self, task: Task, repo: RepoConfig, ws: Workspace, sandbox: Sandbox, watch: Watch
    ) -> Outcome:
        assert task.id is not None
        self._move(task.id, State.RUNNING)
        for command in repo.setup:
            result = sandbox.exec(command)
            self._record(task.id, "setup", {"command": command, "output": describe(result)})
            if not result.ok:
                return Outcome(State.FAILED, f"setup command failed: {command}")
        try:
            if repo.agent == "command":
                assert repo.agent_command is not None
                summary = run_command_agent(
                    sandbox, repo.agent_command, task, repo.limits, watch.check, self._record
                )
                return Outcome(State.AWAITING_APPROVAL, "the agent command finished", summary)
            agent = self._agent(task, repo, ws, sandbox, watch)
            agent.run()
        except Finished as done:
            return Outcome(State.AWAITING_APPROVAL, "the agent finished", str(done))
        except NeedsHuman as stop:
            return Outcome(State.NEEDS_INPUT, str(stop))
        except Cancelled as stop:
            return Outcome(State.CANCELLED, str(stop))
        raise AssertionError("the agent loop only ends by raising")

    def _agent(
        self, task: Task, repo: RepoConfig, ws: Workspace, sandbox: Sandbox, watch: Watch
    ) -> Agent:
        assert task.id is not None
        messages = [
            {"role": "system", "content": render("system", repo_instructions=_instructions(ws))},
            {
                "role": "user",
                "content": render(
                    "task", task_id=task.id, repo=task.repo, branch=task.branch, prompt=task.prompt
                ),
            },
        ]
        if task.attempts > 1 or task.head_commit:  # earlier work is on the branch
            messages.append(
                {
                    "role": "user",
                    "content": render(
                        "resumed", reason=task.reason or "interrupted", base_commit=ws.base_commit
                    ),
                }
            )
        task_id = task.id
        model = self.llm.model

        def between_turns() -> list[str]:
            watch.check()
            with transaction(self.engine) as s:
                return [
                    render("nudge", author=n.author, text=n.text) for n in take_nudges(s, task_id)
                ]

        def on_turn(turn: Turn) -> None:
            usage = turn.usage
            with transaction(self.engine) as s:
                current = get_task(s, task_id)
                current.turns += 1
                current.tokens_in += usage.prompt_tokens
                current.tokens_out += usage.completion_tokens
                current.cost_usd += cost_usd(model, usage) or 0.0
                s.add(current)
                record(s, task_id, "turn", _turn_payload(turn))

        return Agent(
            llm=self.llm,
            env=sandbox,
            limits=repo.limits,
            messages=messages,
            between_turns=between_turns,
            on_turn=on_turn,
            cost=lambda usage: cost_usd(model, usage),
        )

    def _hand_back(
        self, task: Task, ws: Workspace | None, sandbox: Sandbox | None
    ) -> dict[str, Any]:
        """Commit what the agent left and bring the branch into the canonical repo."""
        if ws is None or sandbox is None:
            return {}

        def exec_(command: str) -> tuple[int, str]:
            result = sandbox.exec(command, timeout_s=120)
            return result.exit_code, result.output

        with contextlib.suppress(docker.errors.APIError):
            sandbox.container.start()  # a cancel killed it; the hand-back needs it running
        workspace.commit_leftovers(exec_, ws, f"nightcrew: work on task {task.id}")
        sandbox.remove()
        collected = workspace.collect(ws)
        return {
            "head_commit": collected.head_commit,
            "summary_stat": collected.diff_stat,
        }

    def _move(self, task_id: int, to: State, **fields: Any) -> None:
        with transaction(self.engine) as s:
            transition(
                s,
                task_id,
                to,
                actor=self.worker_id,
                where=[Task.worker_id == self.worker_id],
                **fields,
            )

    def _finish(self, task_id: int, outcome: Outcome, **fields: Any) -> None:
        stat = fields.pop("summary_stat", None)
        summary = outcome.summary
        if stat and outcome.state is State.AWAITING_APPROVAL:
            summary = f"{summary}\n\n{stat}" if summary else stat
        if summary is not None:
            fields["summary"] = summary
        try:
            with transaction(self.engine) as s:
                transition(
                    s,
                    task_id,
                    outcome.state,
                    reason=outcome.reason,
                    actor=self.worker_id,
                    where=[Task.worker_id == self.worker_id],
                    **fields,
                )
        except Conflict:
            pass  # the reaper took it meanwhile; the next attempt starts from the branch

    def _record(self, task_id: int, kind: str, payload: dict[str, Any]) -> None:
        with transaction(self.engine) as s:
            record(s, task_id, kind, payload)


class Watch(threading.Thread):
    """Beside a running task: renews the claim and turns a cancel request into a killed
    sandbox, so even a long command stops within seconds."""

    def __init__(self, worker: Worker, task_id: int) -> None:
        super().__init__(daemon=True, name=f"watch-{task_id}")
        self.worker, self.task_id = worker, task_id
        self.sandbox: Sandbox | None = None
        self.cancelled_by: str | None = None
        self.lost = False
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            self.beat()

    def beat(self) -> None:
        with transaction(self.worker.engine) as s:
            task = heartbeat(s, self.task_id, self.worker.worker_id)
        if task is None:
            self.lost = True
        elif task.cancel_requested_at is not None:
            self.cancelled_by = task.cancel_requested_by or "someone"
        if (self.lost or self.cancelled_by) and self.sandbox is not None:
            self.sandbox.kill()

    def check(self) -> None:
        """Between turns: raise Cancelled if the task was cancelled or taken away."""
        self.beat()
        if self.lost:
            raise Cancelled("the worker lost its claim on the task")
        if self.cancelled_by:
            raise Cancelled(f"cancelled by {self.cancelled_by}")

    def stop(self) -> None:
        self._stop.set()


def _instructions(ws: Workspace) -> str:
    for name in ("AGENTS.md", "CLAUDE.md"):
        text = workspace.read_workspace_file(ws.path, name)
        if text:
            return render("repo_instructions", file=name, text=text)
    return ""


def _turn_payload(turn: Turn) -> dict[str, Any]:
    return {
        "turn": turn.number,
        "content": (turn.content or "")[:2000],
        "calls": turn.calls,
        "tokens_in": turn.usage.prompt_tokens,
        "tokens_out": turn.usage.completion_tokens,
    }
