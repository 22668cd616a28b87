"""The task lifecycle: every state and every legal move between states, in one table.

Everything that changes a task's state asks `check_transition` first; nothing else in the
code base decides what may follow what. Pure: no I/O, so it is tested exhaustively.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    # Queued behind prerequisites (other tasks that must merge first); see storage/plans.py.
    WAITING = "waiting"
    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    CHECKING = "checking"
    REVIEWING = "reviewing"
    REVISING = "revising"
    NEEDS_INPUT = "needs_input"
    AWAITING_APPROVAL = "awaiting_approval"
    MERGING = "merging"
    MERGED = "merged"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


class IllegalTransition(Exception):
    """A state change the lifecycle does not allow; nothing was written."""

    def __init__(self, src: State, dst: State) -> None:
        super().__init__(f"illegal transition {src} -> {dst}")
        self.src, self.dst = src, dst


S = State

# States a worker holds (heartbeating); a stale heartbeat here means the worker died.
WORKING: frozenset[State] = frozenset(
    {S.PREPARING, S.RUNNING, S.CHECKING, S.REVIEWING, S.REVISING, S.MERGING}
)
# States nobody acts on any more.
CLOSED: frozenset[State] = frozenset({S.MERGED, S.CANCELLED, S.REJECTED})
# States that wait for a person.
WAITING: frozenset[State] = frozenset({S.NEEDS_INPUT, S.AWAITING_APPROVAL})

_WORK_EXITS = {S.NEEDS_INPUT, S.FAILED, S.CANCELLED, S.QUEUED}  # QUEUED: re-queued by the reaper

TRANSITIONS: dict[State, frozenset[State]] = {
    # WAITING -> QUEUED: every prerequisite merged; -> NEEDS_INPUT: one failed, was rejected
    # or cancelled (the person chooses: run anyway, or cancel).
    S.WAITING: frozenset({S.QUEUED, S.NEEDS_INPUT, S.CANCELLED}),
    # QUEUED -> WAITING: a task re-queued (retry, reply) while a prerequisite is not merged.
    # QUEUED -> NEEDS_INPUT, AWAITING_APPROVAL: the reply that re-queued a waiting task was
    # deleted in Slack before any worker took it: back where it was (`storage.tasks`).
    S.QUEUED: frozenset(
        {S.PREPARING, S.WAITING, S.CANCELLED, S.FAILED, S.NEEDS_INPUT, S.AWAITING_APPROVAL}
    ),
    S.PREPARING: frozenset({S.RUNNING, *_WORK_EXITS}),
    # RUNNING -> AWAITING_APPROVAL: a repo with no checks and no review parks straight away.
    S.RUNNING: frozenset({S.CHECKING, S.REVIEWING, S.AWAITING_APPROVAL, *_WORK_EXITS}),
    S.CHECKING: frozenset({S.REVIEWING, S.REVISING, S.AWAITING_APPROVAL, *_WORK_EXITS}),
    S.REVIEWING: frozenset({S.REVISING, S.AWAITING_APPROVAL, *_WORK_EXITS}),
    S.REVISING: frozenset({S.CHECKING, S.REVIEWING, S.AWAITING_APPROVAL, *_WORK_EXITS}),
    # A reply resumes the task (re-queued so any worker can pick it up); retry starts over.
    S.NEEDS_INPUT: frozenset({S.QUEUED, S.CANCELLED, S.REJECTED, S.FAILED}),
    # Approve -> MERGING; "request changes" -> QUEUED for a revision round; MERGED: a person
    # merged its pull request on the forge (the forge's answer says so).
    S.AWAITING_APPROVAL: frozenset({S.MERGING, S.QUEUED, S.REJECTED, S.CANCELLED, S.MERGED}),
    # A merge that cannot be done parks the task for a human with the reason.
    S.MERGING: frozenset({S.MERGED, S.NEEDS_INPUT, S.AWAITING_APPROVAL, S.FAILED}),
    S.FAILED: frozenset({S.QUEUED}),  # retry
    S.CANCELLED: frozenset({S.QUEUED}),  # retry
    S.MERGED: frozenset(),
    S.REJECTED: frozenset(),
}


def can_transition(src: State, dst: State) -> bool:
    return dst in TRANSITIONS[State(src)]


def check_transition(src: State, dst: State) -> None:
    """Raise IllegalTransition unless the lifecycle allows `src -> dst`."""
    if not can_transition(src, dst):
        raise IllegalTransition(State(src), State(dst))
