"""Merging an approved task: rebase onto the latest base, prove the commit that will land
in a clean room, then merge per the repo's policy and push. The git plumbing is in
executor/git/merge.py; this is the job around it.

What is approved is what lands. The approval recorded the commit a person saw
(`approved_commit`); a clean rebase of it may land once proven again (its tree must be the
one git's own three-way merge makes, checked on the host); any other change of the tree (the
agent resolving conflicts) parks the task for a new approval with the interdiff in its proof
pack. A merge that cannot be done parks the task back in `awaiting_approval` with the reason,
so approving again retries it and a nudge asks the agent for changes.

Bookkeeping comes from the database only: `head_commit` recorded after each rebase,
`checks_passed` events naming the exact commit proven in a clean room, and `landing_commit`,
the commit about to go on the base, written before any ref moves. A resumed merge looks for
that commit on the base (and pushes it if the remote lacks it), never for text in commits."""

from __future__ import annotations

from typing import Any

from executor.agents.loop import NeedsHuman, render
from executor.agents.tools import describe
from executor.git import merge, workspace
from executor.pipeline import pull_request, stages
from executor.pipeline.job import Outcome, TaskJob
from storage.db import transaction
from storage.lifecycle import State
from storage.tasks import events, get_task

MERGE_RETRIES = 3  # the base moved under us this many times: let a person look


def perform_merge(job: TaskJob) -> tuple[Outcome, dict[str, Any]]:
    if pull_request.uses_forge(job):  # the forge merges; its answer says whether it did
        return pull_request.merge_through_forge(job)
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
    canonical = workspace.canonical_repo(job.home, task.repo, repo)  # url: fetched just now
    base, branch_ref = repo.base_branch, f"refs/heads/{task.branch}"
    if task.landing_commit is not None:  # an earlier attempt got as far as choosing it
        if merge.is_ancestor(canonical, task.landing_commit, f"refs/heads/{base}"):
            return _landed(job, canonical, task.landing_commit)
        _record(job, landing_commit=None)  # the base never got it: start over
    if task.approved_commit is None:
        return park("no approved commit is recorded; approve again"), {}
    if not merge.has_ref(canonical, branch_ref):
        return park(f"branch {task.branch} is gone; retry the task"), {}
    if task.head_commit and merge.rev(canonical, branch_ref) != task.head_commit:
        return park(f"branch {task.branch} changed after it was approved; review it again"), {}
    if not _approved_or_clean_rebase(job, task.head_commit):
        return park("the branch is not the approved commit; review it again"), {}
    base_tip = merge.rev(canonical, f"refs/heads/{base}")
    if not merge.is_ancestor(canonical, base_tip, branch_ref):
        parked = _rebase(job, base_tip)
        if parked is not None:
            return parked
    head = merge.rev(canonical, branch_ref)
    unproven = repo.checks and head not in _proven(job)  # e.g. killed during those checks
    if unproven and not all(c.passed for c in job.prove(head, after="merge")):
        return park(f"checks fail on the latest {base}: see the checks"), {}
    outside = stages.out_of_scope(
        merge.touched_files(canonical, base_tip, head), repo.allowed_paths, task.allowed_paths
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
    _record(job, landing_commit=new)  # before any ref moves: how a resumed merge knows
    if repo.url is not None and repo.merge.push:  # the remote is the truth: push first
        try:
            merge.push(canonical, url_or_remote=repo.url, base=base, new=new)
        except merge.GitError as exc:  # most often the remote moved: fetch, rebase, again
            raise merge.BaseMoved(str(exc)) from exc
    try:
        merge.advance_base(canonical, base=base, new=new, old=base_tip)
    except merge.LocalChanges as exc:  # the person's checkout: theirs to settle, no fault
        return park(str(exc)), {}
    return _landed(job, canonical, new)


def _landed(job: TaskJob, canonical: Any, new: str) -> tuple[Outcome, dict[str, Any]]:
    """`new` is on the base here: push it where the repo pushes after a local merge; only
    then is the task merged (a remote that lacks it parks the task, and approving again
    retries the push)."""
    task, repo = job.task, job.repo
    base = repo.base_branch
    assert task.branch is not None
    if repo.url is None and repo.merge.push and merge.remote_of(canonical) is not None:
        try:
            merge.push(canonical, url_or_remote="origin", base=base, new=new)
        except merge.GitError as exc:
            if not merge.remote_has(canonical, remote="origin", base=base, commit=new):
                return park(
                    f"merged into {base} locally, but the push to origin failed; approve "
                    f"again to push: {exc}"
                ), {}
    notes = []
    if repo.merge.delete_branch:
        try:
            if not merge.delete_branch(canonical, task.branch):
                notes.append(f"branch {task.branch} kept: it is checked out")
        except merge.GitError as exc:
            notes.append(f"branch {task.branch} not deleted: {exc}")
    reason = f"merged into {base} ({repo.merge.policy})" + "".join(f"; {n}" for n in notes)
    return Outcome(State.MERGED, reason), {"merge_commit": new}


def _proven(job: TaskJob) -> set[str]:
    """The commits whose checks passed in a clean room."""
    with transaction(job.engine) as s:
        return {
            e.payload.get("head", "")
            for e in events(s, job.task_id)
            if e.kind == "checks_passed" and e.payload.get("room") == "clean"
        }


def _approved_or_clean_rebase(job: TaskJob, head: str | None) -> bool:
    """`head` is what was approved, or a clean rebase of it that this job recorded."""
    approved = job.task.approved_commit
    if head is None or head == approved:
        return head is not None
    with transaction(job.engine) as s:
        return any(
            e.kind == "rebase"
            and e.payload.get("clean") is True
            and e.payload.get("approved") == approved
            and e.payload.get("head") == head
            for e in events(s, job.task_id)
        )


def _rebase(job: TaskJob, base_tip: str) -> tuple[Outcome, dict[str, Any]] | None:
    """Rebase the task branch onto `base_tip` in a fresh sandbox; None when it was clean.
    A rebase the agent had to finish changed the tree after approval: it is proven, and the
    task parks for a new approval with what changed since the approved commit."""
    task, repo = job.task, job.repo
    before = task.head_commit
    assert before is not None
    with job.fresh_sandbox() as (ws, sandbox):
        rebase = sandbox.exec(f"git rebase --quiet {base_tip}")  # exactly the tip we read
        job.record("rebase", {"output": describe(rebase)})
        if not rebase.ok:
            conflict = render(
                "rebase_conflict", base=repo.base_branch, output=rebase.output[-3000:]
            )
            try:
                job.resolve_conflicts(ws, sandbox, conflict)  # the task's own agent
            except NeedsHuman as stop:
                return park(f"resolving rebase conflicts: {stop}"), {}
        collected = job.checkpoint(ws, sandbox, task.summary)
    head = collected.head_commit
    if not merge.is_ancestor(ws.canonical, base_tip, head):
        return park(f"could not rebase onto the latest {repo.base_branch}: conflicts unresolved"), {
            "head_commit": head
        }
    # The tree a clean rebase must end in, made by the host's git, not in any sandbox.
    expected, clean = merge.merged_tree(ws.canonical, base_tip, before)
    if rebase.ok and clean and merge.tree(ws.canonical, head) == expected:
        job.record(
            "rebase",
            {"clean": True, "onto": base_tip, "approved": task.approved_commit, "head": head},
        )
        _record(job, head_commit=head)  # the rebased branch is now the one that lands
        return None
    measured = workspace.measure(ws.canonical, base_tip, head)
    checks = job.prove(head, after="rebase")
    job.record_proof(measured, checks, None, 0, reference=expected, base=base_tip)
    why = "the agent resolved conflicts" if not rebase.ok else "the rebase changed the tree"
    return Outcome(
        State.AWAITING_APPROVAL,
        f"not merged: {why} in the rebase onto the latest {repo.base_branch}; the proof pack "
        "shows what changed since the approval: approve again to merge",
    ), {"head_commit": head}


def _record(job: TaskJob, **fields: Any) -> None:
    with transaction(job.engine) as s:
        current = get_task(s, job.task_id)
        for name, value in fields.items():
            setattr(current, name, value)
            setattr(job.task, name, value)
        s.add(current)
