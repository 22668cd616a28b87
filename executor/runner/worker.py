"""A worker: claims tasks and works on each in its own sandbox, on its own branch.

`work()` reads as rq's: stop requested? → maintenance if due → claim (None = idle) →
perform → repeat. `perform()` never lets a task go: whatever is raised, the work is handed
back to the canonical repo when possible and exactly one outcome is recorded."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
from sqlalchemy import Engine, func
from sqlmodel import col, select

from executor.agents.llm import LLMClient, ModelOutage
from executor.agents.loop import Cancelled
from executor.agents.planner import Meter, PlanUnusable
from executor.config.defaults import IDLE_POLL_S, PLANNER_STALE_S
from executor.config.schema import Config, RepoConfig
from executor.costs.budget import WAITING, Books, held
from executor.costs.plan_estimate import estimate_nanos, over_budget, planning_refused
from executor.git import workspace
from executor.git.workspace import Workspace, WorkspaceError
from executor.monitoring import metrics
from executor.pipeline import forge_sync, pull_request
from executor.pipeline.job import Outcome, TaskJob
from executor.pipeline.merging import perform_merge
from executor.pipeline.planning import charge as charge_planning
from executor.pipeline.planning import plan_spec
from executor.pipeline.watch import Interrupted, Watch
from executor.runner.fleet import remove_dead_sandboxes
from executor.sandbox.container import Sandbox
from executor.sandbox.warm import WarmPool, discard
from storage.db import reading, transaction
from storage.defaults import HEARTBEAT_TIMEOUT_S, MAX_ATTEMPTS
from storage.dependencies import settle
from storage.errors import Conflict
from storage.lifecycle import CLOSED, WORKING, State
from storage.models import Task, utcnow
from storage.plan_draft import PlanDraft
from storage.plans import claim_planning, draft_of, finish_planning, planning_due
from storage.queue import claim_next, reap_stale, release, show_waiting
from storage.tasks import events, transition
from storage.wakeup import Bell

log = logging.getLogger(__name__)


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
    heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S
    clock: Callable[[], datetime] = utcnow  # budgets' "today"; injected in tests
    sandboxes: WarmPool | None = None  # shared by the executor's workers; none: no spares
    reload: Callable[[], Config] | None = None  # the config as the file says now (ConfigWatch)
    # Rung when work is queued (storage.wakeup): an idle worker waits on it, polling every
    # `idle_poll_s` anyway; none: it only polls.
    bell: Bell | None = None
    idle_poll_s: float = IDLE_POLL_S
    _next_maintenance: float = 0.0
    # One client per forge repo, kept so its conditional GETs (ETags) are reused.
    forges: forge_sync.Forges = field(default_factory=lambda: forge_sync.Forges())

    def __post_init__(self) -> None:
        if self.sandboxes is None:
            root = self.home / "sandboxes"
            self.sandboxes = WarmPool(
                self.docker, executor_id=self.executor_id, root=root, spares=0
            )

    @property
    def books(self) -> Books:
        return Books.of(self.config, self.clock)

    def work(self, *, drain: bool = False) -> int:
        """Run tasks until `stop` is set (or, with `drain`, the queue is empty)."""
        done = 0
        while not self.stop.is_set():
            self.maintain()
            rung = self.bell.rung if self.bell else 0  # a ring from now on is not missed
            try:
                if self.plan_once():
                    continue
                task = self.claim()
            except Exception:  # the database is away: wait and try again, don't die
                log.exception("%s: claiming failed; retrying", self.worker_id)
                self.stop.wait(IDLE_POLL_S)
                continue
            if task is None:
                if drain:
                    break
                self.idle(rung)
                continue
            if self.bell is not None and self.bell.waiters:
                self.bell.ring()  # one wake can stand for several tasks: pass it on
            self.perform(task)
            done += 1
        return done

    def idle(self, rung: int) -> None:
        """Wait for work: until the bell rings (work was queued since `rung`), the poll
        interval passes, or the executor stops (it rings the bell too)."""
        if self.bell is None:
            self.stop.wait(self.idle_poll_s)
        elif not self.stop.is_set():
            self.bell.wait(rung, self.idle_poll_s)

    def plan_once(self) -> bool:
        """Plan one requested plan (from Slack), if any: the planner's sandbox and model run
        here, not in the bot. Its answer, or why there is none, lands on the plan's card."""
        with reading(self.engine) as s:
            if not planning_due(s, stale_s=PLANNER_STALE_S):
                return False
        with transaction(self.engine) as s:
            plan = claim_planning(s, self.worker_id, stale_s=PLANNER_STALE_S)
        if plan is None:
            return False
        assert plan.id is not None
        draft: PlanDraft | None = None
        error: str | None = None
        meter = Meter()  # what the model calls used, however the run ends: all of it is charged
        repo = self.config.repos.get(plan.repo)
        try:
            if repo is None:
                raise PlanUnusable(f"repo {plan.repo} is not in the config any more")
            with reading(self.engine) as s:  # the budget may have run out since it was asked
                refused = planning_refused(s, self.books, plan.repo)
            if refused:
                raise PlanUnusable(refused)
            previous = None
            if plan.feedback and plan.proposal:
                with contextlib.suppress(ValueError):
                    previous = draft_of(plan)
            planned = plan_spec(
                client=self.docker,
                llm=self.llm,
                home=self.home,
                repo_name=plan.repo,
                repo=repo,
                spec=plan.spec,
                executor_id=self.executor_id,
                previous=previous,
                feedback=plan.feedback,
                meter=meter,
            )
            draft = planned.draft
        except PlanUnusable as exc:
            error = str(exc)
        except Exception as exc:  # a bug in planning must not kill the worker
            log.exception("%s: planning plan %s failed", self.worker_id, plan.id)
            error = f"planning failed: {type(exc).__name__}: {exc}"
        with transaction(self.engine) as s:
            charge_planning(
                s,
                self.books,
                repo=plan.repo,
                plan_id=plan.id,
                model=self.llm.model,
                usage=meter.usage,
            )
            note = None
            if draft is not None and repo is not None:  # said on the card, before queueing
                note = over_budget(s, self.books, plan.repo, estimate_nanos(draft, repo))
            finish_planning(s, plan.id, self.worker_id, draft=draft, error=error, note=note)
        return True

    def maintain(self) -> None:
        if time.monotonic() < self._next_maintenance:
            return
        self._next_maintenance = time.monotonic() + self.heartbeat_timeout_s / 3
        try:
            with transaction(self.engine) as s:
                reap_stale(s, timeout_s=self.heartbeat_timeout_s, max_attempts=MAX_ATTEMPTS)
            remove_dead_sandboxes(
                self.docker,
                self.engine,
                timeout_s=self.heartbeat_timeout_s,
                alive=self.executor_id,  # its spares wait for tasks
            )
            self.prune_workspaces()
        except Exception:  # housekeeping must never stop the work
            log.exception("maintenance failed; trying again later")
        try:  # what happened on the forges comes back; rejected tasks' PRs are closed
            forge_sync.sync(self.engine, self.config, self.forges)
        except Exception:
            log.exception("forge sync failed; trying again later")

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
        """The next task, skipping repos at their `max_concurrent` cap and holding queued
        tasks of repos over a daily budget (saying so on them). On SQLite the count and the
        claim share one write transaction, so the cap is exact; on PostgreSQL two executors
        claiming at the same instant may overshoot it by one."""
        if self.reload is not None:  # budgets, caps and repos as the file says now
            self.config = self.reload()
        capped = {n: r.max_concurrent for n, r in self.config.repos.items() if r.max_concurrent}
        with transaction(self.engine) as s:
            # Waiting tasks whose prerequisites merged are queued (or parked, if one failed)
            # in the claim's own transaction: a crash in between loses and repeats nothing.
            settle(s)
            full: list[str] = []
            if capped:
                busy = s.exec(
                    select(Task.repo, func.count())
                    .where(col(Task.repo).in_(list(capped)), col(Task.state).in_(list(WORKING)))
                    .group_by(Task.repo)
                ).all()
                full = [repo for repo, n in busy if n >= capped[repo]]
            waiting: dict[str, str] = {}
            if self.config.budgets.any:
                books = self.books
                day, budgets = books.today(s)
                waiting = held(budgets, day)
                show_waiting(s, waiting, marker=WAITING)
            return claim_next(s, self.worker_id, exclude_repos=full, hold_repos=list(waiting))

    def perform(self, task: Task) -> None:
        assert task.id is not None
        metrics.TASKS_STARTED.labels("merge" if task.state is State.MERGING else "run").inc()
        repo = self.config.repos.get(task.repo)
        if repo is None:
            state = State.AWAITING_APPROVAL if task.state is State.MERGING else State.FAILED
            self._finish(task.id, Outcome(state, f"repo {task.repo!r} is not configured"))
            return
        watch = Watch(
            self.engine,
            self.worker_id,
            task.id,
            self.stop,
            heartbeat_timeout_s=self.heartbeat_timeout_s,
        )
        watch.start()
        job = TaskJob(
            books=self.books,
            engine=self.engine,
            docker=self.docker,
            llm=self.llm,
            home=self.home,
            worker_id=self.worker_id,
            executor_id=self.executor_id,
            task=task,
            repo=repo,
            watch=watch,
            sandboxes=self.sandboxes,
        )
        try:
            if task.state is State.MERGING:
                outcome, fields = self._guarded(lambda: perform_merge(job), merging=True)
            else:
                outcome, fields = self._run(job)
        finally:
            watch.stop()
        if watch.lost:
            return  # the reaper moved the task on; the next attempt starts from the branch
        if outcome.state is State.MERGING:  # interrupted by a shutdown: give it back
            with transaction(self.engine) as s:
                release(s, task.id, self.worker_id, reason=outcome.reason or "released")
            return
        self._finish(task.id, outcome, **fields)

    def _run(self, job: TaskJob) -> tuple[Outcome, dict[str, Any]]:
        """Prepare, run, and hand the work back whatever happened."""
        task = job.task
        assert task.branch is not None
        ws: Workspace | None = None
        sandbox: Sandbox | None = None
        fields: dict[str, Any] = {}

        def run() -> tuple[Outcome, dict[str, Any]]:
            nonlocal ws, sandbox
            pull_request.fetch_issue(job)  # a task from an issue URL: its text is the prompt
            ws, sandbox = job.start_sandbox()
            fields["base_commit"] = ws.base_commit
            return job.run(ws, sandbox), {}

        outcome, _ = self._guarded(run)
        if ws is None or sandbox is None:
            return outcome, fields  # nothing started (start_sandbox cleans up after itself)
        if job.watch.lost:  # another worker owns the task now: its branch is not ours to write
            self.sandboxes.retire(sandbox, lambda: discard(sandbox))
            return outcome, fields
        kept = workspace.checkout_path(self.home, job.task_id)
        saved = True
        try:
            if outcome.state is State.AWAITING_APPROVAL and job.checkpointed is not None:
                # Exactly what was checked and reviewed: what the checks left behind in the
                # workspace (caches, build output) must not join the branch now.
                collected = job.checkpointed
            else:
                collected = job.hand_back(ws, sandbox)
            fields |= {"head_commit": collected.head_commit}
            if outcome.state is State.AWAITING_APPROVAL and collected.diff_stat:
                outcome.summary = f"{outcome.summary or ''}\n\n{collected.diff_stat}".strip()
            if outcome.state is State.AWAITING_APPROVAL and pull_request.uses_forge(job):
                self._publish(job, collected.head_commit, outcome)
        except Exception as exc:  # the checkout still holds the work: keep it, say so
            log.exception("task %s: hand-back failed", job.task_id)
            outcome = Outcome(
                State.FAILED,
                f"{outcome.reason or outcome.state}; and the work could not be saved to the "
                f"branch ({type(exc).__name__}: {exc}); it is still in {kept}",
            )
            saved = False  # never delete it now
        finally:
            if saved and outcome.state is State.CANCELLED:
                self.sandboxes.retire(sandbox, lambda: discard(sandbox))  # and the checkout
            else:
                self.sandboxes.retire(sandbox, lambda: workspace.keep(ws, self.home, job.task_id))
        return outcome, fields

    def _publish(self, job: TaskJob, head: str, outcome: Outcome) -> None:
        """A `pull_request` repo's task parks: its branch goes up and its draft PR carries the
        proof pack (the summary as the task will record it)."""
        job.task.summary = outcome.summary
        with transaction(self.engine) as s:
            proofs = [e.payload for e in events(s, job.task_id) if e.kind == "proof"]
        proof = proofs[-1] if proofs and proofs[-1].get("commit") == head else None
        note = pull_request.publish_on_park(job, head, proof or {"commit": head})
        if note:
            outcome.reason = f"{outcome.reason}; {note}" if outcome.reason else note

    def _guarded(self, step: Any, *, merging: bool = False) -> tuple[Outcome, dict[str, Any]]:
        """Run `step`, turning every way it can stop into an Outcome."""
        try:
            outcome: Outcome
            outcome, fields = step()
            return outcome, fields
        except Interrupted as stop:
            if merging:  # released for another worker to resume (see perform)
                return Outcome(State.MERGING, str(stop)), {}
            return Outcome(State.QUEUED, f"re-queued: {stop}"), {}
        except Cancelled as stop:
            if merging:  # people cannot cancel a merge; treat it as a stop, not a verdict
                return Outcome(State.MERGING, str(stop)), {}
            return Outcome(State.CANCELLED, str(stop)), {}
        except ModelOutage as exc:  # the model stayed away for the whole outage window
            log.warning("task parked: %s", exc)
            if merging:
                return Outcome(State.AWAITING_APPROVAL, f"not merged: {exc}; approve again"), {}
            return Outcome(
                State.NEEDS_INPUT,
                f"the model is unavailable: {exc}. The work so far is kept on the branch;"
                " reply or retry to continue",
            ), {}
        except Exception as exc:  # anything at all: the task must not stay claimed forever
            log.exception("task failed")
            if merging:  # parked back for approval: approving again retries the merge
                return Outcome(
                    State.AWAITING_APPROVAL, f"not merged: {type(exc).__name__}: {exc}"
                ), {}
            return Outcome(State.FAILED, f"failed: {type(exc).__name__}: {exc}"), {}

    def _finish(self, task_id: int, outcome: Outcome, **fields: Any) -> None:
        metrics.TASKS_FINISHED.labels(State(outcome.state).value).inc()
        if outcome.state is State.FAILED:
            metrics.TASKS_FAILED.inc()
        if outcome.summary is not None:
            fields["summary"] = outcome.summary
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
        except Exception:  # e.g. the database is away: the reaper will re-queue the task
            log.exception("task %s: could not record its outcome %s", task_id, outcome.state)


__all__ = ["Outcome", "RepoConfig", "Worker"]
