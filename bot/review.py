"""The review queue: tasks waiting for approval, riskiest first, each with reasons a person
understands ("touches migrations/; 412 lines changed; review left 2 findings").

One ranking for every surface (`/agent review`, the App Home's waiting section, `nightcrew
review`, the `/review` page), so they all list the same tasks in the same order. `rank` is
pure (tasks and their proof packs in, ordered entries out); `waiting` reads the database."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from storage.lifecycle import State
from storage.models import Task, TaskEvent

# Paths whose change deserves a second look whatever its size (migrations lose data, CI and
# lock files run code elsewhere, secrets leak).
SENSITIVE = (
    "migrations/",
    "migration/",
    ".github/",
    ".gitlab-ci",
    "Dockerfile",
    "docker-compose",
    ".lock",
    "pyproject.toml",
    "package.json",
    "requirements",
    "setup.py",
    "secret",
    ".pem",
)
_LEVEL = {"high": 300, "medium": 200, "low": 100}


@dataclass(frozen=True)
class Entry:
    """One task in the queue: its place comes from `score`; `reasons` say why, worst first."""

    task: Task
    proof: dict[str, Any]
    score: int
    reasons: list[str] = field(default_factory=list)

    @property
    def level(self) -> str:
        return str((self.proof.get("risk") or {}).get("level") or "unknown")

    @property
    def why(self) -> str:
        return "; ".join(self.reasons) or "small, checked and reviewed"


def _sensitive(files: Sequence[str]) -> list[str]:
    """The sensitive places touched, named by the shortest telling prefix (`migrations/`)."""
    named: list[str] = []
    for path in files:
        for mark in SENSITIVE:
            if mark in path:
                place = path[: path.index(mark) + len(mark)] if mark.endswith("/") else path
                if place not in named:
                    named.append(place)
                break
    return named


def assess(task: Task, proof: dict[str, Any]) -> Entry:
    """Score one waiting task from its proof pack. Weights: what can break things unseen
    (failing or absent checks, a change after approval, sensitive files) outweighs size."""
    parts: list[tuple[int, str]] = []
    checks = proof.get("checks") or []
    if not proof:
        parts.append((60, "no proof pack recorded"))
    elif not checks:
        parts.append((25, "no checks ran"))
    elif not all(c.get("passed") for c in checks):
        parts.append((80, "checks failing"))
    if proof.get("since_approval"):
        parts.append((50, "changed since it was approved"))
    sensitive = _sensitive([str(f) for f in proof.get("files") or []])
    if sensitive:
        shown = ", ".join(sensitive[:3]) + (
            f" and {len(sensitive) - 3} more" * (len(sensitive) > 3)
        )
        parts.append((40, f"touches {shown}"))
    review = proof.get("review")
    if proof and not review:
        parts.append((15, "not reviewed"))
    elif review:
        verdict = str(review.get("verdict") or "")
        if verdict and verdict != "approve":
            parts.append((30, f"review: {verdict.replace('_', ' ')}"))
        findings = len(review.get("findings") or [])
        if findings:
            plural = "s" if findings != 1 else ""
            parts.append((min(40, 8 * findings), f"review left {findings} finding{plural}"))
    lines = int(proof.get("insertions") or 0) + int(proof.get("deletions") or 0)
    if lines:
        parts.append((min(45, lines // 10), f"{lines:,} lines changed"))
    files = len(proof.get("files") or [])
    if files > 10:
        parts.append((min(20, files), f"{files} files touched"))
    rounds = int(proof.get("rounds") or 0)
    if rounds:
        parts.append((6 * min(rounds, 5), f"took {rounds} revision round{'s' * (rounds != 1)}"))
    level = str((proof.get("risk") or {}).get("level") or "")
    score = _LEVEL.get(level, 250) + sum(weight for weight, _ in parts)
    parts.sort(key=lambda p: -p[0])  # stable: equal weights keep the order above
    return Entry(task, proof, score, [reason for _, reason in parts])


def rank(waiting: Sequence[tuple[Task, dict[str, Any]]]) -> list[Entry]:
    """Riskiest first; equal scores: the task waiting longest first, then the lower id."""
    entries = [assess(task, proof) for task, proof in waiting]
    return sorted(entries, key=lambda e: (-e.score, e.task.updated_at, e.task.id or 0))


def latest_proofs(session: Session, task_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Each task's newest proof pack (one query)."""
    if not task_ids:
        return {}
    rows = session.exec(
        select(TaskEvent)
        .where(col(TaskEvent.task_id).in_(task_ids), TaskEvent.kind == "proof")
        .order_by(col(TaskEvent.id))
    ).all()
    return {row.task_id: row.payload for row in rows}  # later rows overwrite earlier ones


def waiting(
    session: Session, *, may_decide: Callable[[Task], bool] | None = None, limit: int = 200
) -> list[Entry]:
    """The tasks awaiting approval that `may_decide` accepts (all without it), ranked."""
    tasks = session.exec(
        select(Task)
        .where(Task.state == State.AWAITING_APPROVAL)
        .order_by(col(Task.id))
        .limit(limit)
    ).all()
    tasks = [t for t in tasks if may_decide is None or may_decide(t)]
    proofs = latest_proofs(session, [t.id for t in tasks if t.id is not None])
    return rank([(t, proofs.get(t.id or 0, {})) for t in tasks])
