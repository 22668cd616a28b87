"""The `pull_request` merge policy: the task's branch goes to the remote and a draft PR (or
GitLab MR) carries the proof pack; Approve marks it ready and merges it through the forge's
API; the forge's answer, recorded in the database, is what says "merged".

What is approved is what lands: the PR's head on the forge must be exactly the approved
commit (checked before the merge, and GitHub and GitLab check it again themselves: the merge
call names the sha). A head nightcrew did not push means someone else pushed to the branch:
the task parks for a person. A refusal by the forge (required reviews, status checks,
conflicts) parks the task with the forge's reason; approving again retries."""

from __future__ import annotations

import logging
import re
from typing import Any

from executor.config.redact import redact
from executor.forge.base import Forge, PullRequest, Refused
from executor.forge.connect import NoToken, forge_for
from executor.forge.http import ForgeError
from executor.git import merge
from executor.pipeline.job import Outcome, TaskJob
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Task
from storage.tasks import events, get_task

log = logging.getLogger(__name__)
MAX_BODY_CHARS = 60_000  # GitHub's limit on a PR body is 65,536 characters
MAX_TITLE_CHARS = 120


def uses_forge(job: TaskJob) -> bool:
    return job.repo.merge.policy == "pull_request"


def title_of(task: Task) -> str:
    first = (task.prompt.strip().splitlines() or [""])[0]
    text = f"nightcrew #{task.id}: {first}"
    return text if len(text) <= MAX_TITLE_CHARS else text[: MAX_TITLE_CHARS - 1] + "…"


def slack_link(task: Task) -> str | None:
    if not task.channel:
        return None
    ts = (task.thread_ts or "").replace(".", "")
    return f"https://slack.com/archives/{task.channel}" + (f"/p{ts}" if ts else "")


def verbatim(text: str) -> str:
    """Text an agent or a model wrote, as a fenced block: on the forge it neither mentions
    anyone (`@team`), nor closes issues when the PR merges (`Fixes #1`), nor renders links or
    images. The fence is longer than any run of backticks inside."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def body_of(task: Task, proof: dict[str, Any] | None, forge: Forge) -> str:
    """The proof pack as the PR's description (Markdown)."""
    lines = [f"Task {task.id} from nightcrew, requested by {task.requester}.", ""]
    if task.issue_url:
        number = task.issue_url.rstrip("/").rsplit("/", 1)[-1]
        lines += [f"{forge.fixes_word} #{number}", ""]
    lines += ["## Summary", "", verbatim((task.summary or "(no summary)").strip()[:5000]), ""]
    if proof:
        commit = proof.get("commit", "")
        lines += ["## Checks", ""]
        checks = proof.get("checks") or []
        if not checks:
            lines.append("No checks are configured for this repo.")
        for check in checks:
            mark = "passed" if check.get("passed") else f"failed (exit {check.get('exit_code')})"
            lines.append(f"- `{check.get('command')}`: {mark} on `{commit[:12]}`")  # config's
        review = proof.get("review")
        lines += ["", "## Review", ""]
        if review:
            lines.append(f"Verdict: **{review.get('verdict', '').replace('_', ' ')}**")
            said = [str(review.get("summary") or "")]
            for finding in review.get("findings") or []:
                where = finding.get("file", "") + (
                    f":{finding['line']}" if finding.get("line") else ""
                )
                said.append(f"- {where} {finding.get('message', '')}".rstrip())
            if any(said):
                lines += ["", verbatim("\n".join(said).strip()[:10_000])]
        else:
            lines.append("No automated review for this repo.")
        risk = proof.get("risk") or {}
        lines += ["", "## Risk", "", f"**{risk.get('level', '?')}**"]
        if risk.get("reasons"):
            lines.append(verbatim("\n".join(f"- {r}" for r in risk["reasons"])))
        # file names are the agent's: fenced like its text
        lines += ["", "## Changes", "", verbatim(str(proof.get("diff_stat", ""))[:5000])]
        if proof.get("since_approval"):
            lines += ["", "Changed since it was approved: approve again to merge."]
    lines += ["", "## Cost", "", f"${task.cost_usd:.2f} in {task.turns} turns"]
    if task.unpriced_tokens:
        lines[-1] += f" (cost unknown for {task.unpriced_tokens} tokens)"
    link = slack_link(task)
    lines += ["", "---", f"Proof commit `{(proof or {}).get('commit', task.head_commit or '')}`."]
    if link:
        lines.append(f"Discussion and approval: [Slack thread]({link})")
    text = "\n".join(lines)
    return text if len(text) <= MAX_BODY_CHARS else text[:MAX_BODY_CHARS] + "\n…(cut)"


def _remote(job: TaskJob) -> str:
    """Where the branch goes: the repo's url, or a `path:` repo's origin."""
    if job.repo.url is not None:
        return job.repo.url
    if merge.remote_of(job.canonical) is None:
        raise ForgeError("the repo has no url and no origin remote to push the branch to")
    return "origin"


def _save(job: TaskJob, pr: PullRequest, **more: Any) -> None:
    with transaction(job.engine) as s:
        current = get_task(s, job.task_id)
        fields = {"pr_number": pr.number, "pr_url": pr.url, "pr_state": pr.state, **more}
        for name, value in fields.items():
            setattr(current, name, value)
            setattr(job.task, name, value)
        s.add(current)


def _latest_proof(job: TaskJob) -> dict[str, Any] | None:
    with transaction(job.engine) as s:
        proofs = [e.payload for e in events(s, job.task_id) if e.kind == "proof"]
    return proofs[-1] if proofs else None


def publish(job: TaskJob, commit: str, proof: dict[str, Any] | None) -> PullRequest:
    """Push exactly `commit` to the task's branch on the remote and open its draft PR, or
    update the one it has (found again by branch after a crash between open and record)."""
    task = job.task
    assert task.branch is not None
    with forge_for(job.repo) as forge:
        merge.push_branch(
            job.canonical, url_or_remote=_remote(job), branch=task.branch, commit=commit
        )
        with transaction(job.engine) as s:
            stored = get_task(s, job.task_id)  # cost as it is now; the summary being parked
            fresh = stored.model_copy(update={"summary": task.summary or stored.summary})
        title, body = title_of(fresh), body_of(fresh, proof, forge)
        pr = forge.get_pr(task.pr_number) if task.pr_number else forge.find_pr(task.branch)
        if pr is None or pr.state != "open":
            pr = forge.open_pr(
                branch=task.branch, base=job.repo.base_branch, title=title, body=body
            )
        else:
            pr = forge.update_pr(pr.number, title=title, body=body)
        _save(job, pr, pr_head=commit)
        job.record("pull_request", {"number": pr.number, "url": pr.url, "head": commit})
        return pr


def publish_on_park(job: TaskJob, commit: str, proof: dict[str, Any]) -> str | None:
    """At park time; a forge that cannot be reached does not stop the task from parking:
    returns the reason for the card (approving pushes and opens the PR again)."""
    try:
        publish(job, commit, proof)
    except Exception as exc:  # never let the PR stop the park (nor pass as a lost hand-back)
        log.warning("task %s: PR not published: %s", job.task_id, redact(str(exc)))
        job.record("forge_error", {"during": "publish", "error": redact(str(exc))})
        return f"pull request not updated: {redact(str(exc))}"
    return None


def park(reason: str) -> tuple[Outcome, dict[str, Any]]:
    return Outcome(State.AWAITING_APPROVAL, f"not merged: {reason}"), {}


def merge_through_forge(job: TaskJob) -> tuple[Outcome, dict[str, Any]]:
    """Approve on a `pull_request` repo: the approved commit, proven in a clean room, is the
    PR's head; mark it ready; merge it through the API with the repo's method."""
    task, repo = job.task, job.repo
    approved = task.approved_commit
    if approved is None:
        return park("no approved commit is recorded; approve again")
    unproven = repo.checks and approved not in _proven(job)  # e.g. killed during them
    if unproven and not all(c.passed for c in job.prove(approved, after="merge")):
        return park("checks fail on the approved commit: see the checks")
    try:
        with forge_for(repo) as forge:
            pr = forge.get_pr(task.pr_number) if task.pr_number else None
            if pr is not None and pr.state == "merged":
                return _merged(job, pr, by="the forge (already merged)")
            if pr is not None and pr.state == "closed":
                return park(f"pull request #{pr.number} was closed on {forge.kind}")
            if pr is None or (pr.head_sha != approved and pr.head_sha == task.pr_head):
                # never opened, or our own older push: put the approved commit up
                pr = publish(job, approved, _latest_proof(job))
            if pr.head_sha != approved:
                return park(
                    f"the pull request's head is {pr.head_sha[:12]}, not the approved commit "
                    f"{approved[:12]}: someone else pushed to {task.branch}; review it again"
                )
            forge.mark_ready(pr)
            job.record("pr_merge_requested", {"number": pr.number, "sha": approved})
            title = f"{title_of(task)} (#{pr.number})"
            try:
                sha = forge.merge_pr(pr.number, sha=approved, method=repo.merge.method, title=title)
            except Refused as refused:
                job.record("pr_merge_refused", {"number": pr.number, "reason": str(refused)})
                return park(f"{forge.kind} refused the merge: {refused}")
            answer = PullRequest(pr.number, pr.url, "merged", approved, False, sha, pr.ref)
            return _merged(job, answer, by=f"{forge.kind} (approved by {task.approved_by})")
    except NoToken as exc:
        return park(str(exc))
    except (ForgeError, merge.GitError) as exc:
        return park(f"the forge could not be reached: {redact(str(exc))}")


def _merged(job: TaskJob, pr: PullRequest, *, by: str) -> tuple[Outcome, dict[str, Any]]:
    """The forge answered that the PR is merged: that answer is recorded, and it alone moves
    the task to merged."""
    job.record(
        "forge_merged",
        {"number": pr.number, "merge_commit": pr.merge_commit, "head": pr.head_sha, "by": by},
    )
    reason = f"merged into {job.repo.base_branch} through pull request #{pr.number} by {by}"
    return Outcome(State.MERGED, reason), {
        "merge_commit": pr.merge_commit,
        "pr_state": "merged",
        "pr_number": pr.number,
        "pr_url": pr.url or job.task.pr_url,
    }


def _proven(job: TaskJob) -> set[str]:
    with transaction(job.engine) as s:
        return {
            e.payload.get("head", "")
            for e in events(s, job.task_id)
            if e.kind == "checks_passed" and e.payload.get("room") == "clean"
        }


def fetch_issue(job: TaskJob) -> None:
    """A task started from an issue URL: the issue's title and body become its prompt, once
    (before the agent first runs)."""
    task = job.task
    if not task.issue_url or not uses_forge(job):
        return
    with transaction(job.engine) as s:
        if any(e.kind == "issue" for e in events(s, job.task_id)):
            return
    number = int(task.issue_url.rstrip("/").rsplit("/", 1)[-1])
    with forge_for(job.repo) as forge:
        issue = forge.issue(number)
    prompt = (
        f"{issue.title}\n\n{issue.body}".strip() + f"\n\n(issue #{issue.number}: {task.issue_url})"
    )
    with transaction(job.engine) as s:
        current = get_task(s, job.task_id)
        current.prompt = prompt[:20_000]
        s.add(current)
    job.record("issue", {"number": issue.number, "title": issue.title, "url": task.issue_url})
    task.prompt = prompt[:20_000]
