"""Merging an approved task: rebase onto the latest base (the agent resolves conflicts in
its sandbox and the checks run again), then merge per the repo's policy and push. The git
plumbing is in executor/git/merge.py; this is the job around it.

A merge that cannot be done parks the task back in `awaiting_approval` with the reason, so
approving again retries it and a nudge asks the agent for changes. What makes a merge safe
to resume after a crash: the trailer on our merge commit, `head_commit` recorded after each
rebase, and `checks_passed` events naming the exact head the checks passed on."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from executor.agents.loop import Finished, NeedsHuman, render
from executor.agents.tools import describe
from executor.git import merge, workspace
from executor.pipeline import stages
from executor.pipeline.job import Outcome, TaskJob
from storage.db import transaction
from storage.lifecycle import State
from storage.tasks import events, get_task

MERGE_RETRIES = 3  # the base moved under us this many times: let a person look


def perform_merge(job: TaskJob) -> tuple[Outcome, dict[str, Any]]:
    for _ in range(MERGE_RETRIES):
        try:
            return _merge(job)
        except merge.BaseMoved:
            continue  # someone merged meanwhile: rebase onto the new base and try again
    return park(f"{job.repo.base_branch} kept moving; approve again to retry"), {}


def park(reason: str) -> Outcome:
    return Outcome(State.AWAITING_APPROVAL, f"not merged: {reason}")


def _merge(job: TaskJob) -> tuple[Outcome, dict[str, Any]]:
    task, repo = job.task, job.repo
    assert task.branch is not None
    canonical = workspace.canonical_repo(job.home, task.repo, repo)
    base, branch_ref = repo.base_branch, f"refs/heads/{task.branch}"
    done = merge.already_merged(
        canonical,
        base=base,
        task_id=job.task_id,
        head=task.head_commit,
        base_commit=task.base_commit,
    )
    if done:  # an earlier attempt merged and then died before recording it
        return Outcome(State.MERGED, f"merged into {base}"), {"merge_commit": done}
    if not merge.has_ref(canonical, branch_ref):
        return park(f"branch {task.branch} is gone; retry the task"), {}
    if task.head_commit and merge.rev(canonical, branch_ref) != task.head_commit:
        return park(f"branch {task.branch} changed after it was approved; review it again"), {}
    base_tip = merge.rev(canonical, f"refs/heads/{base}")
    if not merge.is_ancestor(canonical, base_tip, branch_ref):
        parked = _rebase(job, base_tip)
        if parked is not None:
            return parked, {}
    head = merge.rev(canonical, branch_ref)
    if repo.checks and head not in _checked_heads(job):  # e.g. killed during those checks
        parked = _check(job, head)
        if parked is not None:
            return parked, {}
    outside = stages.out_of_scope(
        merge.touched_files(canonical, base_tip, head), repo.allowed_paths
    )
    if outside:
        return park(f"changes outside allowed_paths: {', '.join(outside[:5])}"), {}
    text = merge.message(
        task_id=job.task_id,
        prompt=task.prompt,
        summary=task.summary,
        approved_by=task.approved_by,
    )
    new = merge.make_commit(
        canonical, base_tip=base_tip, head=head, policy=repo.merge.policy, text=text
    )
    if repo.url is not None and repo.merge.push:  # the remote is the truth: push first
        try:
            merge.push(canonical, url_or_remote=repo.url, base=base, new=new)
        except merge.GitError as exc:  # most often the remote moved: fetch, rebase, again
            raise merge.BaseMoved(str(exc)) from exc
    merge.advance_base(canonical, base=base, new=new, old=base_tip)
    # The base has moved: from here on the task IS merged; what fails is only noted.
    notes = []
    if repo.url is None and repo.merge.push and merge.remote_of(canonical) is not None:
        try:
            merge.push(canonical, url_or_remote="origin", base=base, new=new)
        except merge.GitError as exc:
            notes.append(f"merged locally; push to origin failed: {exc}")
    if repo.merge.delete_branch:
        try:
            if not merge.delete_branch(canonical, task.branch):
                notes.append(f"branch {task.branch} kept: it is checked out")
        except merge.GitError as exc:
            notes.append(f"branch {task.branch} not deleted: {exc}")
    reason = f"merged into {base} ({repo.merge.policy})" + "".join(f"; {n}" for n in notes)
    return Outcome(State.MERGED, reason), {"merge_commit": new, "head_commit": head}


def _checked_heads(job: TaskJob) -> set[str]:
    with transaction(job.engine) as s:
        return {
            e.payload.get("head", "") for e in events(s, job.task_id) if e.kind == "checks_passed"
        }


def _check(job: TaskJob, head: str) -> Outcome | None:
    """Run the checks on `head` in a fresh sandbox; None when they pass."""
    with job.fresh_sandbox() as (_, sandbox):
        return _run_checks(job, sandbox, head, after="merge")


def _run_checks(job: TaskJob, sandbox: Any, head: str, *, after: str) -> Outcome | None:
    checks = stages.run_checks(sandbox, job.repo.checks)
    job.watch.check()  # a shutdown kills the checks: that is not their verdict
    job.record("checks", {"after": after, "results": [asdict(c) for c in checks]})
    failed = [c.command for c in checks if not c.passed]
    if failed:
        return park(f"checks fail on the latest {job.repo.base_branch}: {', '.join(failed)}")
    job.record("checks_passed", {"head": head})
    return None


def _rebase(job: TaskJob, base_tip: str) -> Outcome | None:
    """Rebase the task branch onto `base_tip` in a sandbox and check it; None when done."""
    task, repo = job.task, job.repo
    with job.fresh_sandbox() as (ws, sandbox):
        rebase = sandbox.exec(f"git rebase --quiet {base_tip}")  # exactly the tip we read
        job.record("rebase", {"output": describe(rebase)})
        if not rebase.ok:
            conflict = render(
                "rebase_conflict", base=repo.base_branch, output=rebase.output[-3000:]
            )
            try:
                job.agent(ws, sandbox, instruction=conflict).run()
            except Finished:
                pass
            except NeedsHuman as stop:
                return park(f"resolving rebase conflicts: {stop}")
        collected = job.checkpoint(ws, sandbox)
        if not merge.is_ancestor(ws.canonical, base_tip, f"refs/heads/{task.branch}"):
            return park(
                f"could not rebase onto the latest {repo.base_branch}: conflicts unresolved"
            )
        _record_head(job, collected.head_commit)  # the rebased branch is now the approved one
        return _run_checks(job, sandbox, collected.head_commit, after="rebase")


def _record_head(job: TaskJob, head: str) -> None:
    with transaction(job.engine) as s:
        current = get_task(s, job.task_id)
        current.head_commit = head
        s.add(current)
    job.task.head_commit = head
