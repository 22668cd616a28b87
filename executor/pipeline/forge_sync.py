"""What happens on the forge comes back, and what people decide here goes there: a poll from
the workers' maintenance over every task with an open PR.

- a task rejected or cancelled here: its PR is closed;
- a PR merged on the forge by a person: an awaiting task is merged (the forge's answer is
  recorded: merge commit, head); closed unmerged: the waiting task is rejected;
- with `review_nudges: true`, each new comment on the PR (not by the token's own user)
  becomes a nudge, once (keyed by the comment's id, like a Slack reply's ts).

Polls are conditional GETs (`If-None-Match`): an unchanged PR costs GitHub no rate limit.
Every move is a conditional transition, so several workers polling at once do each once."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from sqlalchemy import Engine
from sqlmodel import col, select

from executor.config.redact import redact
from executor.config.schema import Config, RepoConfig
from executor.forge.base import Forge, PullRequest
from executor.forge.connect import NoToken, forge_for
from executor.forge.http import ForgeError
from storage.db import transaction
from storage.errors import Conflict
from storage.lifecycle import CLOSED, WAITING, State
from storage.models import Nudge, Task
from storage.tasks import add_nudge, get_task, record, transition

log = logging.getLogger(__name__)
ACTOR = "forge"
MAX_NUDGE_CHARS = 20_000


class Forges:
    """A forge client per repo, kept between polls (their ETag caches with them)."""

    def __init__(self) -> None:
        self._by_repo: dict[tuple[str, object], Forge] = {}

    def get(self, name: str, repo: RepoConfig) -> Forge:
        key = (name, repo.merge)
        if key not in self._by_repo:
            self._by_repo[key] = forge_for(repo)
        return self._by_repo[key]

    def close(self) -> None:
        for forge in self._by_repo.values():
            forge.close()
        self._by_repo.clear()


def sync(engine: Engine, config: Config, forges: Forges) -> None:
    repos = {n: r for n, r in config.repos.items() if r.merge.policy == "pull_request"}
    if not repos:
        return
    with transaction(engine) as s:
        open_prs = s.exec(
            select(Task).where(
                col(Task.repo).in_(list(repos)),
                col(Task.pr_number).is_not(None),
                col(Task.pr_state) == "open",
            )
        ).all()
    for task in open_prs:
        try:
            _sync_one(engine, task, repos[task.repo], forges.get(task.repo, repos[task.repo]))
        except (ForgeError, NoToken) as exc:  # the next poll tries again; nothing is lost
            log.warning("task %s: forge sync: %s", task.id, redact(str(exc)))


def _sync_one(engine: Engine, task: Task, repo: RepoConfig, forge: Forge) -> None:
    assert task.id is not None and task.pr_number is not None
    state = State(task.state)
    if state in (State.REJECTED, State.CANCELLED):
        forge.close_pr(task.pr_number)
        _set(engine, task.id, pr_state="closed", event=("pr_closed", {"why": state.value}))
        return
    pr = forge.get_pr(task.pr_number)
    if pr.state == "merged":
        _merged_on_forge(engine, task, pr, forge.kind)
    elif pr.state == "closed":
        _closed_on_forge(engine, task, forge.kind)
    elif repo.merge.review_nudges and state not in CLOSED and state is not State.MERGING:
        for comment in _new_comments(engine, task, forge):
            _nudge(engine, task.id, comment.author, comment.id, comment.body, forge.kind)


def _merged_on_forge(engine: Engine, task: Task, pr: PullRequest, kind: str) -> None:
    assert task.id is not None
    payload = {"number": pr.number, "merge_commit": pr.merge_commit, "head": pr.head_sha}
    with transaction(engine) as s:
        current = get_task(s, task.id)
        if State(current.state) is State.AWAITING_APPROVAL:
            try:
                transition(
                    s,
                    task.id,
                    State.MERGED,
                    reason=f"pull request #{pr.number} was merged on {kind}",
                    actor=ACTOR,
                    merge_commit=pr.merge_commit,
                    pr_state="merged",
                )
                record(s, task.id, "forge_merged", payload | {"by": f"a person on {kind}"})
                return
            except Conflict:
                return  # it moved meanwhile: the next poll sees it as it is
        if State(current.state) is not State.MERGING:  # the merge job records its own
            current.pr_state = "merged"
            s.add(current)
            record(s, task.id, "pr_merged_elsewhere", payload)


def _closed_on_forge(engine: Engine, task: Task, kind: str) -> None:
    assert task.id is not None
    with transaction(engine) as s:
        current = get_task(s, task.id)
        state = State(current.state)
        if state in WAITING:
            with contextlib.suppress(Conflict):
                transition(
                    s,
                    task.id,
                    State.REJECTED,
                    reason=f"pull request #{task.pr_number} was closed on {kind}",
                    actor=ACTOR,
                    pr_state="closed",
                )
        elif state in CLOSED:
            current.pr_state = "closed"
            s.add(current)


def _new_comments(engine: Engine, task: Task, forge: Forge) -> Iterator[object]:
    assert task.id is not None
    me = forge.me()
    comments = [c for c in forge.comments(task.pr_number or 0) if c.author != me and c.body]
    if not comments:
        return iter(())
    with transaction(engine) as s:
        seen = set(
            s.exec(
                select(Nudge.slack_ts).where(
                    Nudge.task_id == task.id, col(Nudge.slack_ts).startswith("forge:")
                )
            ).all()
        )
    return iter([c for c in comments if f"forge:{c.id}" not in seen])


def _nudge(
    engine: Engine, task_id: int, author: str, comment_id: int, body: str, kind: str
) -> None:
    """One comment, one nudge: on a waiting task it starts a revision round, as a person's
    nudge does."""
    with transaction(engine) as s:
        current = get_task(s, task_id)
        state = State(current.state)
        if state in CLOSED or state is State.MERGING or current.landing_commit:
            return
        add_nudge(
            s,
            task_id,
            text=body[:MAX_NUDGE_CHARS],
            author=f"{author} on {kind}",
            source=kind,
            slack_ts=f"forge:{comment_id}",
        )
        if state in WAITING or state is State.FAILED:
            transition(
                s,
                task_id,
                State.QUEUED,
                reason=f"review comment by {author} on {kind}",
                actor=ACTOR,
                finished_at=None,
                attempts=0,
            )


def _set(engine: Engine, task_id: int, *, event: tuple[str, dict], **fields: object) -> None:
    with transaction(engine) as s:
        current = get_task(s, task_id)
        for name, value in fields.items():
            setattr(current, name, value)
        s.add(current)
        record(s, task_id, *event)
