"""What a person can do to tasks, whatever the front end (terminal or Slack).

Each action validates, writes in one transaction, and returns an `Outcome` whose message is
shown to the person; a refusal raises `ActionError` with a message saying what to do instead,
and nothing is written. Running and merging are the executor's work: here we only record
the intent (a cancel request, an approval, a nudge) where the executor will find it."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col

from executor.config.schema import Config
from executor.forge.connect import looks_like_issue_url, match_issue
from storage.defaults import MAX_PROMPT_CHARS
from storage.dependencies import (
    BadDependency,
    add_prerequisites,
    drop_prerequisites,
    prerequisites,
)
from storage.lifecycle import CLOSED, WAITING, WORKING, State
from storage.models import Priority, Task, utcnow
from storage.tasks import REVISION_BY, add_nudge, create_task, get_task, record, transition
from storage.text import clean


class ActionError(Exception):
    """A refused action; the message is for the person who asked."""


@dataclass(frozen=True)
class Outcome:
    task: Task
    message: str


def clean_text(text: str, *, what: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """Strip control characters (keeping newlines and tabs) and surrounding blanks."""
    kept = clean(text).strip()
    if not kept:
        raise ActionError(f"the {what} is empty; say what the agent should do")
    if len(kept) > max_chars:
        raise ActionError(f"the {what} is {len(kept):,} characters; the limit is {max_chars:,}")
    return kept


def add(
    session: Session,
    *,
    repo: str,
    prompt: str,
    requester: str,
    priority: Priority = Priority.NORMAL,
    source: str = "cli",
    channel: str | None = None,
    thread_ts: str | None = None,
    issue_url: str | None = None,
    after: Collection[int] = (),
) -> Outcome:
    """Queue a task; with `after`, it waits until those tasks are merged (refused, writing
    nothing, if one cannot be waited for or the wait would be circular)."""
    text = clean_text(prompt, what="prompt")
    task = create_task(
        session,
        repo=repo,
        prompt=text,
        requester=requester,
        priority=priority,
        source=source,
        channel=channel,
        thread_ts=thread_ts,
    )
    if issue_url is not None:  # its text becomes the prompt when the task first runs
        task.issue_url = issue_url
        session.add(task)
        session.flush()
    if after:
        try:
            task = add_prerequisites(session, task, list(after))
        except BadDependency as exc:
            raise ActionError(str(exc)) from None  # the caller's transaction rolls back
        if task.state is State.WAITING:
            return Outcome(task, f"task {task.id} on {repo} {task.reason}, then starts")
    return Outcome(task, f"queued task {task.id} on {repo} (branch {task.branch})")


def from_issue(config: Config, prompt: str, repo: str | None) -> tuple[str, str] | None:
    """(repo, issue URL) when the whole prompt is an issue URL (Slack's `<url>` or
    `<url|label>` included) of a `pull_request` repo in the config; None for any other
    prompt. An issue URL of no configured repo is refused rather than run as a prompt."""
    text = prompt.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].split("|", 1)[0]
    if not looks_like_issue_url(text):
        return None
    found = match_issue(config, text)
    if found is None:
        raise ActionError(
            f"{text} is an issue of no repo here: nightcrew.yaml needs a repo with merge "
            "policy pull_request on that forge and project"
        )
    if repo is not None and repo != found.repo:
        raise ActionError(f"{text} is an issue of repo {found.repo}, not {repo}")
    return found.repo, found.url


def check_may_decide(task: Task, actor: str, approvers: Collection[str], verb: str) -> None:
    """Only the task's requester or one of its repo's approvers may approve, reject, merge or
    cancel it."""
    if actor != task.requester and actor not in approvers:
        who = "the requester" + (" or an approver" if approvers else "")
        raise ActionError(
            f"only {who} of task {task.id} may {verb} it (requested by {task.requester})"
        )


def cancel(
    session: Session, task_id: int, *, actor: str, approvers: Collection[str] = ()
) -> Outcome:
    task = get_task(session, task_id)
    check_may_decide(task, actor, approvers, "cancel")
    state = State(task.state)
    if state in CLOSED or state is State.FAILED:
        raise ActionError(f"task {task_id} is {state}; nothing to cancel")
    if state is State.MERGING:
        raise ActionError(f"task {task_id} is merging; too late to cancel")
    if state in WORKING:
        return _request_cancel(session, task, actor)
    task = transition(
        session, task_id, State.CANCELLED, reason=f"cancelled by {actor}", actor=actor
    )
    return Outcome(task, f"cancelled task {task_id}")


def _request_cancel(session: Session, task: Task, actor: str) -> Outcome:
    """A worker holds the task: flag it; the worker stops at its next step (and the reaper
    honours the flag if the worker is gone)."""
    assert task.id is not None
    if task.cancel_requested_at is not None:
        raise ActionError(f"task {task.id}: cancel already requested by {task.cancel_requested_by}")
    stmt = (
        update(Task)
        .where(col(Task.id) == task.id, col(Task.state).in_(list(WORKING)))
        .values(cancel_requested_at=utcnow(), cancel_requested_by=actor)
    )
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        session.expire_all()
        return cancel(session, task.id, actor=actor, approvers=[actor])  # it moved on meanwhile
    record(session, task.id, "cancel_requested", {"by": actor})
    task = get_task(session, task.id)
    return Outcome(task, f"cancelling task {task.id}; its agent stops at the next step")


def retry(session: Session, task_id: int, *, actor: str) -> Outcome:
    task = get_task(session, task_id)
    state = State(task.state)
    if state not in (State.FAILED, State.CANCELLED, State.NEEDS_INPUT):
        raise ActionError(
            f"task {task_id} is {state}; only failed, cancelled or needs-input tasks can be retried"
        )
    task = transition(
        session,
        task_id,
        State.QUEUED,
        reason=f"retried by {actor}",
        actor=actor,
        attempts=0,
        cancel_requested_at=None,
        cancel_requested_by=None,
        finished_at=None,
    )
    return Outcome(task, f"re-queued task {task_id}")


def run_anyway(
    session: Session, task_id: int, *, actor: str, approvers: Collection[str] = ()
) -> Outcome:
    """A task parked because a prerequisite failed, was rejected or cancelled: drop its
    prerequisites and queue it on the base as it is now."""
    task = get_task(session, task_id)
    check_may_decide(task, actor, approvers, "run anyway")
    if State(task.state) is not State.NEEDS_INPUT:
        raise ActionError(f"task {task_id} is {task.state}; only a parked task can run anyway")
    dropped = drop_prerequisites(session, task_id)
    if not dropped:
        raise ActionError(f"task {task_id} waits for no other task; reply or retry instead")
    task = transition(
        session,
        task_id,
        State.QUEUED,
        reason=f"run anyway by {actor}, without " + ", ".join(f"#{i}" for i in dropped),
        actor=actor,
        attempts=0,
        finished_at=None,
    )
    return Outcome(task, f"task {task_id} runs on the current base without its prerequisites")


def approve(
    session: Session,
    task_id: int,
    *,
    actor: str,
    approvers: Collection[str] = (),
    base: str | None = None,
) -> Outcome:
    """`base`: the branch it merges into, for the message (the front end knows the config)."""
    task = get_task(session, task_id)
    check_may_decide(task, actor, approvers, "approve")
    state = State(task.state)
    if state in (State.MERGING, State.MERGED):
        raise ActionError(f"task {task_id} is {state}; it was approved by {task.approved_by}")
    if state is not State.AWAITING_APPROVAL:
        raise ActionError(
            f"task {task_id} is {state}; only tasks awaiting approval can be approved"
        )
    unmerged = [p.id for p in prerequisites(session, task_id) if p.state is not State.MERGED]
    after = ", ".join(f"#{i}" for i in unmerged)
    task = transition(
        session,
        task_id,
        State.MERGING,
        # The claim holds the merge until they merge: a plan lands in dependency order.
        reason=f"approved by {actor}" + (f"; merges after {after}" if unmerged else ""),
        actor=actor,
        approved_by=actor,
        approved_at=utcnow(),
        approved_commit=task.head_commit,  # exactly what lands, or a clean rebase of it
        attempts=0,  # merge attempts count from here
    )
    into = f" into {base}" if base else ""
    return Outcome(task, f"approved task {task_id}; branch {task.branch} merges{into} next")


def reject(
    session: Session, task_id: int, *, actor: str, approvers: Collection[str] = ()
) -> Outcome:
    task = get_task(session, task_id)
    check_may_decide(task, actor, approvers, "reject")
    state = State(task.state)
    if state not in WAITING:
        raise ActionError(
            f"task {task_id} is {state}; only tasks awaiting approval or input can be rejected"
        )
    _refuse_if_landed(task, "rejecting")
    task = transition(session, task_id, State.REJECTED, reason=f"rejected by {actor}", actor=actor)
    return Outcome(task, f"rejected task {task_id}; its branch {task.branch} is left unmerged")


def _refuse_if_landed(task: Task, action: str) -> None:
    """A merge that landed on the base but could not push parks with `landing_commit` set:
    the base already holds the approved work, so only approving again (which pushes) fits."""
    if task.landing_commit is not None and State(task.state) is State.AWAITING_APPROVAL:
        raise ActionError(
            f"task {task.id} is already merged into its base branch locally (the push failed);"
            f" {action} cannot undo that: approve it again to push"
        )


def nudge(
    session: Session,
    task_id: int,
    text: str,
    *,
    actor: str,
    source: str = "cli",
    slack_ts: str | None = None,
    attachments: str = "",
    files: list[dict[str, Any]] | None = None,
) -> Outcome:
    """Steer a task. Working or queued: the agent reads it at its next turn. Waiting or
    failed: it starts a revision round (the task is queued again, with the nudge).
    `attachments`: files that came with the note (`bot.slack.replies.files_note`), kept
    after it; the note itself may then be empty, and only the note counts for its limit.
    `files`: a Slack reply's files not fetched yet (`storage.nudge_files.refs`): the agent
    takes the note once their content joins it (`storage.tasks.complete_nudge_files`)."""
    if files:
        text = clean(text).strip()
        if len(text) > MAX_PROMPT_CHARS:
            clean_text(text, what="nudge")  # raises, saying the limit
    elif attachments.strip():
        typed = clean(text).strip()
        if len(typed) > MAX_PROMPT_CHARS:
            clean_text(typed, what="nudge")  # raises, saying the limit
        text = "\n\n".join(filter(None, [typed, clean(attachments).strip()]))
    else:
        text = clean_text(text, what="nudge")
    task = get_task(session, task_id)
    state = State(task.state)
    if state in CLOSED:
        raise ActionError(f"task {task_id} is {state}; nudges only reach open tasks")
    if state is State.MERGING:
        raise ActionError(f"task {task_id} is merging; too late to steer it")
    _refuse_if_landed(task, "a nudge")
    add_nudge(
        session, task_id, text=text, author=actor, source=source, slack_ts=slack_ts, files=files
    )
    if state in WAITING or state is State.FAILED:
        task = transition(
            session,
            task_id,
            State.QUEUED,
            reason=REVISION_BY.format(actor=actor),
            actor=actor,
            finished_at=None,
            attempts=0,  # a person's go-ahead: crash retries count from here
        )
        return Outcome(task, f"task {task_id} goes back to work with your note")
    return Outcome(task, f"task {task_id} gets your note at its agent's next turn")


def parse_task_id(text: str) -> int:
    """`7`, `#7` or ` 7 ` -> 7; anything else is a clear error."""
    cleaned = text.strip().removeprefix("#")
    if not cleaned.isascii() or not cleaned.isdigit() or int(cleaned) <= 0:
        raise ActionError(f"{text.strip()!r} is not a task id; ids are numbers like 7")
    return int(cleaned)
