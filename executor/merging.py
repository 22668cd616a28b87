"""Merging an approved task: rebase onto the latest base (the agent resolves conflicts in
its sandbox and the checks run again), then merge per the repo's policy and push. The git
plumbing is in executor/merge.py; this is the job around it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from executor import merge, pipeline, workspace
from executor.agent import Finished, NeedsHuman, render
from executor.job import Outcome, TaskJob
from executor.tools import describe
from storage.lifecycle import State

MERGE_RETRIES = 3  # the base moved under us this many times: let a person look


def perform_merge(job: TaskJob) -> tuple[Outcome, dict[str, Any]]:
    for _ in range(MERGE_RETRIES):
        try:
            return _merge(job)
        except merge.BaseMoved:
            continue  # someone merged meanwhile: rebase onto the new base and try again
    return Outcome(State.NEEDS_INPUT, f"{job.repo.base_branch} kept moving; approve again"), {}


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
        return Outcome(State.NEEDS_INPUT, f"branch {task.branch} is gone; retry the task"), {}
    base_tip = merge.rev(canonical, f"refs/heads/{base}")
    if not merge.is_ancestor(canonical, base_tip, branch_ref):
        parked = _rebase(job, base_tip)
        if parked is not None:
            return parked, {}
    head = merge.rev(canonical, branch_ref)
    outside = pipeline.out_of_scope(
        merge.changed_files(canonical, base_tip, head), repo.allowed_paths
    )
    if outside:
        reason = f"refusing to merge: changes outside allowed_paths: {', '.join(outside[:5])}"
        return Outcome(State.NEEDS_INPUT, reason), {}
    text = merge.message(
        task_id=job.task_id,
        prompt=task.prompt,
        summary=task.summary,
        approved_by=task.approved_by,
    )
    new = merge.make_commit(
        canonical, base_tip=base_tip, head=head, policy=repo.merge.policy, text=text
    )
    notes = []
    if repo.url is not None:  # the remote is the truth: push first, then move our copy
        if repo.merge.push:
            merge.push(canonical, url_or_remote=repo.url, base=base, new=new)
        merge.advance_base(canonical, base=base, new=new, old=base_tip)
    else:
        merge.advance_base(canonical, base=base, new=new, old=base_tip)
        if repo.merge.push and merge.remote_of(canonical) is not None:
            try:
                merge.push(canonical, url_or_remote="origin", base=base, new=new)
            except merge.GitError as exc:
                notes.append(f"merged locally; push to origin failed: {exc}")
    if repo.merge.delete_branch:
        merge.delete_branch(canonical, task.branch)
    reason = f"merged into {base} ({repo.merge.policy})" + "".join(f"; {n}" for n in notes)
    return Outcome(State.MERGED, reason), {"merge_commit": new, "head_commit": head}


def _rebase(job: TaskJob, base_tip: str) -> Outcome | None:
    """Rebase the task branch onto `base_tip` in a sandbox; None when done and checked."""
    task, repo = job.task, job.repo
    assert task.branch is not None
    ws = workspace.prepare(job.home, task.repo, repo, job.task_id, task.branch)
    sandbox = job.start_sandbox(ws)
    try:
        rebase = sandbox.exec(f"git rebase --quiet origin/{repo.base_branch}")
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
                return Outcome(State.NEEDS_INPUT, f"resolving rebase conflicts: {stop}")
        job.checkpoint(ws, sandbox)
        if not merge.is_ancestor(ws.canonical, base_tip, f"refs/heads/{task.branch}"):
            reason = f"could not rebase onto the latest {repo.base_branch}: conflicts unresolved"
            return Outcome(State.NEEDS_INPUT, reason)
        checks = pipeline.run_checks(sandbox, repo.checks)
        job.record("checks", {"after": "rebase", "results": [asdict(c) for c in checks]})
        failed = [c.command for c in checks if not c.passed]
        if failed:
            reason = f"checks fail after rebasing onto {repo.base_branch}: {', '.join(failed)}"
            return Outcome(State.NEEDS_INPUT, reason)
        return None
    finally:
        job.watch.attach(None)
        sandbox.remove()
        workspace.remove(ws)
