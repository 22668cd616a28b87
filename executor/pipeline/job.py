"""One task's work on one worker: the agent and the pipeline, revising until the work passes
or a person must decide; plus the helpers every step uses (record, move, sandbox, hand-back).

Stops are data: every path returns an `Outcome`; the worker records it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import docker
from sqlalchemy import Engine
from sqlmodel import Session

from executor.agents.external import run_command_agent, run_external
from executor.agents.llm import LLMClient
from executor.agents.llm_reply import Usage
from executor.agents.loop import Agent, Cancelled, Finished, NeedsHuman, Turn, render
from executor.agents.presets import PRESETS, Launch, Used
from executor.agents.tools import describe
from executor.config.defaults import (
    CARD_REFRESH_S,
    CHECK_OUTPUT_TAIL_CHARS,
    MAX_REVISION_ROUNDS,
    PEOPLE_DIFF_CHARS,
)
from executor.config.schema import RepoConfig
from executor.costs.budget import Books, crossed
from executor.costs.pricing import NANOS_PER_USD, cost_nanos, cost_usd, price_of
from executor.git import commit_text, merge, workspace
from executor.git.workspace import Collected, Workspace
from executor.monitoring import metrics
from executor.pipeline import stages
from executor.pipeline.model_wait import ShowModelWait
from executor.pipeline.watch import Watch
from executor.sandbox.container import Sandbox, prepare_workspace
from executor.sandbox.warm import SANDBOX_ENV, SandboxSpec, WarmPool, discard
from storage import outbox, spend
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Task
from storage.tasks import nudges, record, take_nudges, transition


@dataclass
class Outcome:
    state: State
    reason: str | None = None
    summary: str | None = None


@dataclass
class TaskJob:
    engine: Engine
    docker: docker.DockerClient
    llm: LLMClient
    home: Path
    worker_id: str
    executor_id: str
    task: Task
    repo: RepoConfig
    watch: Watch
    books: Books
    sandboxes: WarmPool
    checkpointed: Collected | None = None  # the branch as the pipeline last checked it
    # Set when a charge finds a daily budget reached; the agent stops before its next call.
    over_budget: str | None = None
    # An external agent's conversation (codex, claude-code): later runs resume it.
    agent_session: str | None = None

    @property
    def task_id(self) -> int:
        assert self.task.id is not None
        return self.task.id

    # --- running a task ----------------------------------------------------------------

    def run(self, ws: Workspace, sandbox: Sandbox) -> Outcome:
        """Setup, then the agent and the pipeline: scope, checks, review; revise until the
        work passes or a person must decide."""
        self.move(State.RUNNING)
        for command in self.repo.setup:
            self.watch.check()
            result = sandbox.exec(command)
            self.record("setup", {"command": command, "output": describe(result)})
            if not result.ok:
                self.watch.check()  # a cancel kills the command: report the cancel
                return Outcome(State.FAILED, f"setup command failed: {command}")
        work = self._agent_runner(ws, sandbox)
        feedback: str | None = None
        fixes = reviews = 0
        while True:
            try:
                summary = work(feedback)
                self.watch.check()  # a cancel that came during the last model call
            except NeedsHuman as stop:
                return Outcome(State.NEEDS_INPUT, str(stop))
            self.move(State.CHECKING)
            collected = self.checkpoint(ws, sandbox, summary)
            checks: list[stages.CheckResult] = []
            outside = stages.out_of_scope(
                collected.files_changed, self.repo.allowed_paths, self.task.allowed_paths
            )
            if outside:
                self.record("scope", {"outside": outside})
                feedback = render(
                    "scope",
                    allowed=", ".join(self.task.allowed_paths or self.repo.allowed_paths),
                    files="\n".join(f"- {f}" for f in outside),
                    base_commit=ws.base_commit,
                )
                why = f"changed files outside allowed_paths: {', '.join(outside[:5])}"
            else:  # in a clean room: nothing the agent left in its container counts
                checks = self.prove(collected.head_commit, then=sandbox)
                failed = [c.command for c in checks if not c.passed]
                feedback = stages.checks_feedback(checks) if failed else None
                why = f"checks failed: {', '.join(failed)}"
            if feedback:
                fixes += 1
                if fixes > MAX_REVISION_ROUNDS:
                    return Outcome(State.NEEDS_INPUT, f"{why} (after {MAX_REVISION_ROUNDS} rounds)")
                self.move(State.REVISING, reason=why)
                continue
            verdict = None
            if self.repo.review.enabled:
                self.move(State.REVIEWING)
                diff = workspace.diff_text(ws, collected.head_commit)
                verdict, usage = stages.review(
                    self.llm,
                    prompt=self.task.prompt,
                    diff=diff,
                    checks=checks,
                    waiting=self.model_wait,
                )
                self.account(usage)
                self.record("review", verdict.model_dump())
                self.watch.check()
                if verdict.verdict == "changes_requested" and reviews < self.repo.review.max_rounds:
                    reviews += 1
                    feedback = stages.review_feedback(verdict)
                    self.move(State.REVISING, reason="the review requested changes")
                    continue
            return self._park_for_approval(
                collected, checks, verdict, summary, fixes + reviews, base=ws.base_commit
            )

    def _park_for_approval(
        self,
        collected: Collected,
        checks: list[stages.CheckResult],
        verdict: stages.Verdict | None,
        summary: str,
        rounds: int,
        *,
        base: str,
    ) -> Outcome:
        proof = self.record_proof(collected, checks, verdict, rounds, base=base)
        reason = f"risk {proof['risk']['level']}"
        if verdict is not None and verdict.verdict != "approve":
            reason += f"; review: {verdict.verdict.replace('_', ' ')} (open findings)"
        if proof.get("since_approval"):
            reason += "; changed since it was approved: approve again to merge"
        return Outcome(State.AWAITING_APPROVAL, reason, summary)

    def record_proof(
        self,
        collected: Collected,
        checks: list[stages.CheckResult],
        verdict: stages.Verdict | None,
        rounds: int,
        *,
        reference: str | None = None,
        base: str | None = None,
    ) -> dict[str, Any]:
        """Record the proof pack for `collected.head_commit`, the commit its checks ran on.
        A task approved before whose tree changed since (a nudge, a retry, a conflict
        resolved in the merge) also shows what changed: the interdiff from `reference` (the
        approved commit, or the tree a clean rebase of it would have made) to the new head.
        The whole patch from `base` goes in a `diff` event just before, for people: the
        thread's diff file and the task page (the bot may run on another host than the
        canonical repo, so it reads the patch from the database)."""
        proof = stages.proof_pack(
            diff_stat=collected.diff_stat,
            files=collected.files_changed,
            insertions=collected.insertions,
            deletions=collected.deletions,
            checks=checks,
            verdict=verdict,
            rounds=rounds,
        )
        proof["commit"] = collected.head_commit
        base = base or self.task.base_commit
        if base:
            text, cut = merge.patch(
                self.canonical, base, collected.head_commit, max_chars=PEOPLE_DIFF_CHARS
            )
            self.record("diff", {"commit": collected.head_commit, "diff": text, "cut": cut})
        approved = self.task.approved_commit
        if approved and approved != collected.head_commit:
            stat, patch = merge.interdiff(
                self.canonical, reference or approved, collected.head_commit
            )
            proof["since_approval"] = {
                "approved": approved,
                "commit": collected.head_commit,
                "diff_stat": stat,
                "diff": patch,
            }
        self.record("proof", proof)
        return proof

    @property
    def model_wait(self) -> ShowModelWait:
        """Shows this task's waits for a failing model on its card and in `ls`."""
        return ShowModelWait(self.engine, self.task_id, self.worker_id, self.watch)

    @property
    def canonical(self) -> Path:
        return workspace.canonical_path(self.home, self.task.repo, self.repo)

    def prove(
        self, head: str, *, then: Sandbox | None = None, after: str | None = None
    ) -> list[stages.CheckResult]:
        """Run the repo's checks as proof on exactly `head`, in a clean room: a sandbox that
        never ran a command (a warm spare or a new one, without the agent's environment), a
        fresh host-made checkout of that commit from the canonical repo, the repo's `setup`
        first. Records the results naming the commit, and `checks_passed` when all pass (a
        merge lands only a commit proven so). `then`: the sandbox a cancel kills afterwards."""
        if not self.repo.checks:
            return []
        assert self.task.branch is not None
        spec = replace(SandboxSpec.of(self.repo, self.llm.base_url), env=tuple(SANDBOX_ENV.items()))
        room = self.sandboxes.take(spec)
        try:
            workspace.checkout_commit(self.canonical, self.task.branch, head, into=room.workspace)
            prepare_workspace(room.workspace)  # the clone is the sandbox user's now
            self.watch.attach(room)
            checks = self._setup_then_checks(room)
            self.note_egress(room)
            self.watch.check()  # a cancel or shutdown kills the checks: not their verdict
        finally:
            self.watch.attach(then)
            self.sandboxes.retire(room, lambda: discard(room))
        payload: dict[str, Any] = {"commit": head, "room": "clean"}
        self.record(
            "checks",
            payload
            | {"results": [asdict(c) for c in checks]}
            | ({"after": after} if after else {}),
        )
        if all(c.passed for c in checks):
            self.record("checks_passed", {"head": head, "room": "clean"})
        return checks

    def _setup_then_checks(self, room: Sandbox) -> list[stages.CheckResult]:
        for command in self.repo.setup:
            result = room.exec(command)
            if not result.ok:  # the checks cannot pass without it: say so as a failed check
                return [
                    stages.CheckResult(
                        f"setup: {command}",
                        result.exit_code,
                        round(result.duration_s, 2),
                        result.output[-CHECK_OUTPUT_TAIL_CHARS:],
                        result.killed_reason,
                    )
                ]
        return stages.run_checks(room, self.repo.checks)

    def _agent_runner(self, ws: Workspace, sandbox: Sandbox) -> Callable[[str | None], str]:
        """Runs (or continues) the agent with optional feedback; returns its summary or
        raises NeedsHuman / Cancelled."""
        if self.repo.agent in PRESETS:
            return lambda feedback: self.run_preset(sandbox, feedback)
        if self.repo.agent == "command":
            assert self.repo.agent_command is not None
            command = self.repo.agent_command

            def run_command(feedback: str | None) -> str:
                feedback = "\n\n".join(filter(None, [feedback, *self._nudges()])) or None
                prompt = f"{self.task.prompt}\n\n{feedback}" if feedback else None
                return run_command_agent(
                    sandbox,
                    command,
                    self.task,
                    self.repo.limits,
                    self.watch.check,
                    self._record_for,
                    prompt,
                )

            return run_command
        agent = self.agent(ws, sandbox)

        def run_builtin(feedback: str | None) -> str:
            if feedback:
                agent.messages.append({"role": "user", "content": feedback})
            try:
                agent.run()
            except Finished as done:
                return str(done)
            raise AssertionError("the agent loop only ends by raising")

        return run_builtin

    def run_preset(self, sandbox: Sandbox, feedback: str | None = None) -> str:
        """Run the repo's external agent preset: the task (or, resuming its conversation, only
        the news), then the feedback and any nudges waiting; its reported turns, tokens and
        cost are charged as they come, and a limit stops it (work so far kept). Nudges sent
        while it ran start another run (it cannot read them mid-run)."""
        summary = self._run_preset_once(sandbox, feedback)
        for _ in range(MAX_REVISION_ROUNDS):
            if not self._nudges_waiting():
                break
            summary = self._run_preset_once(sandbox, None)
        return summary

    def _nudges_waiting(self) -> bool:
        with transaction(self.engine) as s:
            return bool(nudges(s, self.task_id, pending_only=True))

    def _run_preset_once(self, sandbox: Sandbox, feedback: str | None) -> str:
        preset = PRESETS[self.repo.agent]
        news = [text for text in [feedback, *self._nudges()] if text]
        resume = self.agent_session if preset.resumes else None
        if resume and news:
            prompt = "\n\n".join(news)
        else:
            prompt = render(
                "task",
                task_id=self.task_id,
                repo=self.task.repo,
                branch=self.task.branch,
                prompt=self.task.prompt,
            )
            prompt = "\n\n".join([prompt, *news])
        launch = Launch(model=self.llm.model, model_url=self.llm.base_url, session=resume)
        command = preset.build(launch)
        totals = {"turns": 0, "tokens": 0}
        limits = self.repo.limits

        def on_line(line: str) -> None:
            used = preset.parse(line)
            if used is None:
                return
            if used.session:
                self.agent_session = used.session
            if not (used.turns or used.tokens_in or used.tokens_out):
                return
            current = self._charge_external(used)
            totals["turns"] += used.turns
            totals["tokens"] += used.tokens_in + used.tokens_out
            if limits.max_turns <= totals["turns"]:
                raise NeedsHuman(f"turn limit reached ({limits.max_turns} turns)")
            if limits.max_tokens <= totals["tokens"]:
                raise NeedsHuman(
                    f"token limit reached ({totals['tokens']:,} of {limits.max_tokens:,})"
                )
            cost = current.cost_nanos / NANOS_PER_USD
            if cost >= limits.max_cost_usd:
                raise NeedsHuman(f"cost limit reached (${cost:.2f} of ${limits.max_cost_usd:.2f})")
            if self.over_budget is not None:
                raise NeedsHuman(self.over_budget)

        try:
            return run_external(
                sandbox,
                command,
                self.task,
                limits,
                self.watch.check,
                self._record_for,
                shown=f"{preset.name}: {command}",
                prompt=prompt,
                env=preset.env(launch),
                on_line=on_line,
            )
        finally:
            self.note_egress(sandbox)

    def resolve_conflicts(self, ws: Workspace, sandbox: Sandbox, instruction: str) -> None:
        """Have the task's own agent finish a rebase that stopped on conflicts; raises
        NeedsHuman when it cannot."""
        if self.repo.agent in PRESETS:
            self.run_preset(sandbox, instruction)
            return
        if self.repo.agent == "command":
            assert self.repo.agent_command is not None
            run_command_agent(
                sandbox,
                self.repo.agent_command,
                self.task,
                self.repo.limits,
                self.watch.check,
                self._record_for,
                f"{self.task.prompt}\n\n{instruction}",
            )
            return
        with contextlib.suppress(Finished):
            self.agent(ws, sandbox, instruction=instruction).run()

    def _nudges(self) -> list[str]:
        """The nudges waiting for this task, taken (they reach the agent's next run)."""
        with transaction(self.engine) as s:
            pending = take_nudges(s, self.task_id)
            return [render("nudge", author=n.author, text=n.text) for n in pending]

    def _charge_external(self, used: Used) -> Task:
        """Charge what an external agent said it used: its own cost when it reports one, else
        the price table's."""
        model, books = self.llm.model, self.books
        usage = Usage(prompt_tokens=used.tokens_in, completion_tokens=used.tokens_out)
        if used.cost_usd is not None:
            nanos: int | None = int(used.cost_usd * NANOS_PER_USD)
        else:
            nanos = cost_nanos(price_of(model, books.prices), usage)
        with transaction(self.engine) as s:
            current = spend.charge(
                s,
                self.task_id,
                model=f"{self.repo.agent}:{model}",
                tokens_in=used.tokens_in,
                tokens_out=used.tokens_out,
                cost_nanos=nanos,
                at=books.clock(),
            )
            current.turns += used.turns
            record(
                s,
                self.task_id,
                "turn",
                {
                    "agent": self.repo.agent,
                    "turns": used.turns,
                    "tokens_in": used.tokens_in,
                    "tokens_out": used.tokens_out,
                    "cost_usd": str(used.cost_usd) if used.cost_usd is not None else None,
                },
            )
            metrics.count_charge(used.tokens_in, used.tokens_out, (nanos or 0) / NANOS_PER_USD)
            if books.budgets.any:
                _, budgets = books.today(s)
                self.over_budget = crossed(budgets, current.repo)
            outbox.refresh_card(s, current, every_s=CARD_REFRESH_S)
            return current

    def agent(self, ws: Workspace, sandbox: Sandbox, *, instruction: str | None = None) -> Agent:
        task = self.task
        messages = [
            {"role": "system", "content": render("system", repo_instructions=_instructions(ws))},
            {
                "role": "user",
                "content": render(
                    "task", task_id=task.id, repo=task.repo, branch=task.branch, prompt=task.prompt
                ),
            },
        ]
        if instruction is not None:
            messages.append({"role": "user", "content": instruction})
        elif task.attempts > 1 or task.head_commit:  # earlier work is on the branch
            resumed = render(
                "resumed", reason=task.reason or "interrupted", base_commit=ws.base_commit
            )
            messages.append({"role": "user", "content": resumed})
        model = self.llm.model

        def between_turns() -> list[str]:
            self.watch.check()
            with transaction(self.engine) as s:
                pending = take_nudges(s, self.task_id)
                return [render("nudge", author=n.author, text=n.text) for n in pending]

        def on_turn(turn: Turn) -> None:
            with transaction(self.engine) as s:  # one write per turn: count, cost, log, card
                current = self._charge(s, turn.usage)
                current.turns += 1
                record(s, self.task_id, "turn", _turn_payload(turn))
                outbox.refresh_card(s, current, every_s=CARD_REFRESH_S)

        return Agent(
            llm=self.llm,
            env=sandbox,
            limits=self.repo.limits,
            messages=messages,
            between_turns=between_turns,
            on_turn=on_turn,
            cost=lambda usage: cost_usd(model, usage, self.books.prices),
            over_budget=lambda: self.over_budget,
            waiting=self.model_wait,
        )

    # --- sandbox and hand-back -----------------------------------------------------------

    def start_sandbox(self) -> tuple[Workspace, Sandbox]:
        """A fresh sandbox (a warm one when ready) with a new clone of the task's branch in
        its own workspace folder."""
        assert self.task.branch is not None
        sandbox = self.sandboxes.take(SandboxSpec.of(self.repo, self.llm.base_url))
        try:
            ws = workspace.prepare(
                self.home,
                self.task.repo,
                self.repo,
                self.task_id,
                self.task.branch,
                into=sandbox.workspace,
            )
            prepare_workspace(ws.path)  # the clone is the sandbox user's now
        except BaseException:
            discard(sandbox)
            raise
        self.watch.attach(sandbox)
        return ws, sandbox

    @contextlib.contextmanager
    def fresh_sandbox(self) -> Iterator[tuple[Workspace, Sandbox]]:
        """A checkout of the task's branch in a new sandbox, both gone afterwards (for the
        merge's rebase and checks; the work itself is saved by checkpoints)."""
        ws, sandbox = self.start_sandbox()
        try:
            yield ws, sandbox
        finally:
            self.watch.attach(None)
            discard(sandbox)

    def checkpoint(self, ws: Workspace, sandbox: Sandbox, summary: str | None) -> Collected:
        """Bring the work so far into the canonical repo, with the sandbox frozen so nothing
        in it races the copy; what is left uncommitted is committed with the agent's summary."""
        self.note_egress(sandbox)
        text = commit_text.work_message(self.task_id, self.task.prompt, summary)
        workspace.commit_leftovers(exec_in(sandbox), ws, text)
        with sandbox.frozen():
            self.checkpointed = workspace.collect(ws)
            return self.checkpointed

    def hand_back(self, ws: Workspace, sandbox: Sandbox) -> Collected:
        """Whatever happened: commit what is left and bring the branch home. The sandbox is
        removed before the workspace is read."""
        self.watch.attach(None)  # a late cancel must not interrupt saving the work
        with contextlib.suppress(docker.errors.APIError):
            sandbox.container.start()  # a cancel killed it; the hand-back needs it running
        # An external agent still running after its limit (run_external released its
        # session): this command's cleanup ends it, with every other process, before the
        # leftovers are committed.
        sandbox.exec("true")
        text = commit_text.work_message(self.task_id, self.task.prompt, None)
        workspace.commit_leftovers(exec_in(sandbox), ws, text)
        sandbox.remove()
        self.note_egress(sandbox)
        return workspace.collect(ws)

    # --- records -------------------------------------------------------------------------

    def move(self, to: State, **fields: Any) -> None:
        with transaction(self.engine) as s:
            transition(
                s,
                self.task_id,
                to,
                actor=self.worker_id,
                where=[Task.worker_id == self.worker_id],
                **fields,
            )

    def record(self, kind: str, payload: dict[str, Any]) -> None:
        with transaction(self.engine) as s:
            record(s, self.task_id, kind, payload)

    def _record_for(self, task_id: int, kind: str, payload: dict[str, Any]) -> None:
        self.record(kind, payload)

    def note_egress(self, sandbox: Sandbox | None) -> None:
        """Log the connections the sandbox's allowlist refused since the last look (one
        `egress_refused` event per host:port, with its count) and count them on the card."""
        refused = sandbox.egress.take_refusals() if sandbox and sandbox.egress else []
        if not refused:
            return
        with transaction(self.engine) as s:
            for item in refused:
                record(s, self.task_id, "egress_refused", item)
            current = s.get(Task, self.task_id)
            if current is not None:
                current.egress_refused += sum(int(str(i["count"])) for i in refused)
                outbox.refresh_card(s, current, every_s=0)

    def account(self, usage: Usage | None) -> None:
        if usage is not None:
            with transaction(self.engine) as s:
                self._charge(s, usage)

    def _charge(self, session: Session, usage: Usage) -> Task:
        """Charge the task and the day's ledger; then see whether a budget is now reached."""
        model, books = self.llm.model, self.books
        nanos = cost_nanos(price_of(model, books.prices), usage)
        current = spend.charge(
            session,
            self.task_id,
            model=model,
            tokens_in=usage.prompt_tokens,
            tokens_out=usage.completion_tokens,
            cost_nanos=nanos,
            at=books.clock(),
        )
        metrics.count_charge(
            usage.prompt_tokens, usage.completion_tokens, (nanos or 0) / NANOS_PER_USD
        )
        if books.budgets.any:
            _, budgets = books.today(session)
            self.over_budget = crossed(budgets, current.repo)
        return current


def exec_in(sandbox: Sandbox) -> workspace.Exec:
    def exec_(command: str) -> tuple[int, str]:
        result = sandbox.exec(command, timeout_s=120)
        return result.exit_code, result.output

    return exec_


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


__all__ = ["Cancelled", "Outcome", "TaskJob", "exec_in"]
