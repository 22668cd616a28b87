"""The tables: Task, its event log, the nudges people send it, the Slack outbox, and the
digest and scheduled-task bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import Enum as SAEnum
from sqlmodel import AutoString, Field, SQLModel

from storage.lifecycle import State
from storage.text import CleanJSON, CleanString, CleanText


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which has no time zones) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use storage.models.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(nullable: bool = True, **kw: Any) -> Any:
    default = {} if nullable else {"default_factory": utcnow}
    return Field(sa_type=UTCDateTime, nullable=nullable, **default, **kw)


# Stored as its value ("needs_input") in a plain string column, read back as State.
_STATE_TYPE = SAEnum(
    State, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e]
)


class Priority(IntEnum):
    """Lower value is claimed first."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


class Task(SQLModel, table=True):
    __table_args__ = (Index("ix_task_claim", "state", "priority", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    repo: str
    prompt: str = Field(sa_type=Text)
    state: State = Field(default=State.QUEUED, sa_type=_STATE_TYPE)
    priority: int = Field(default=Priority.NORMAL)
    branch: str | None = None
    # Who asked and where the conversation lives (Slack channel + thread root ts).
    requester: str
    source: str = "cli"
    channel: str | None = None
    thread_ts: str | None = None
    # The card when it is not the thread's root: a fresh card posted in the thread because
    # the first could no longer be edited (bot/slack/card_delivery.py). None: the root is
    # the card.
    card_ts: str | None = None
    # Why the task is in its current state (question, limit hit, failure), shown to people.
    reason: str | None = Field(default=None, sa_type=Text)
    error: str | None = Field(default=None, sa_type=Text)
    summary: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    # Worker ownership: claim sets worker_id + heartbeat_at; the reaper clears them.
    worker_id: str | None = None
    heartbeat_at: datetime | None = _ts()
    # The worker (`<executor id>/<n>`) that claimed it last; unlike worker_id it stays after
    # the task is finished or taken over, so people can see where it ran.
    executor: str | None = None
    attempts: int = 0
    cancel_requested_at: datetime | None = _ts()
    cancel_requested_by: str | None = None
    approved_by: str | None = None
    approved_at: datetime | None = _ts()
    # Accounting. `cost_nanos` is exact (nano-dollars); `cost_usd` is the same amount as a
    # float for readers that want dollars. Tokens of models without a price are counted in
    # `unpriced_tokens`: their cost is unknown, not zero.
    turns: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    cost_nanos: int = Field(default=0, sa_type=BigInteger)
    unpriced_tokens: int = Field(default=0, sa_type=BigInteger)
    # Connections the sandbox tried outside its `network:` allowlist (shown as a warning).
    egress_refused: int = 0
    # Waiting for the model endpoint (an outage): since when, and what fails and until when
    # it keeps trying (the executor's words). Cleared when the model answers again and by
    # every state change.
    model_wait_since: datetime | None = _ts()
    model_wait: str | None = Field(default=None, sa_type=Text)
    # Git.
    base_commit: str | None = None
    head_commit: str | None = None
    merge_commit: str | None = None
    # The head a person approved (set by the approval): a tree that differs from it, other
    # than by a clean rebase nightcrew made, needs a new approval.
    approved_commit: str | None = None
    # The commit the merge is about to put on the base, recorded before any ref moves: the
    # only way a resumed merge learns that it already landed (never from commit text).
    landing_commit: str | None = None
    # A `pull_request` repo's PR (GitHub) or MR (GitLab), as the forge's API last answered:
    # its number, web URL, state ("open", "closed", "merged"), and the commit nightcrew last
    # pushed to its branch (a different head on the forge means someone else pushed).
    pr_number: int | None = None
    pr_url: str | None = None
    pr_state: str | None = None
    pr_head: str | None = None
    # The forge issue the task was started from (its text becomes the prompt when it runs).
    issue_url: str | None = None

    # Plans (storage/plans.py): the plan the task belongs to, and the paths it may touch
    # (glob patterns; None = the repo's own allowed paths). Enforced by the scope check.
    # No foreign key: SQLite adds one to an existing table only by rebuilding it (0010).
    plan_id: int | None = Field(default=None, index=True)
    allowed_paths: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Plan(SQLModel, table=True):
    """A spec cut into small tasks by the planner. `requested`: an executor should plan it
    (`planning` while one does: `worker_id`, `updated_at` its claim); `proposed`: shown for
    a decision, its tasks in `proposal` (validated planner output); `failed`: the planner's
    answer was unusable (`error`); `queued`: its tasks exist (made in one transaction with the
    status change); `discarded`."""

    id: int | None = Field(default=None, primary_key=True)
    repo: str
    spec: str = Field(sa_type=Text)
    title: str = ""
    status: str = "proposed"
    proposal: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    requester: str
    source: str = "cli"
    channel: str | None = None
    thread_ts: str | None = None  # the plan card's ts in Slack: the plan's thread
    # A fresh plan card posted in that thread when the first could no longer be edited
    # (bot/slack/card_delivery.py). None: the thread's root is the card.
    card_ts: str | None = None
    error: str | None = Field(default=None, sa_type=Text)  # why the planner's answer failed
    feedback: str | None = Field(default=None, sa_type=Text)  # a re-plan's request
    note: str | None = Field(default=None, sa_type=Text)  # e.g. over today's budget
    worker_id: str | None = None
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class TaskDependency(SQLModel, table=True):
    """`task_id` starts only once `prerequisite_id` is merged, and merges after it."""

    __tablename__ = "task_dependency"

    task_id: int = Field(foreign_key="task.id", primary_key=True)
    prerequisite_id: int = Field(foreign_key="task.id", primary_key=True, index=True)


class TaskExclusion(SQLModel, table=True):
    """Two tasks of one plan whose allowed paths overlap and neither needs the other: they
    never run at once. Stored both ways round, so the claim looks up one column."""

    __tablename__ = "task_exclusion"

    task_id: int = Field(foreign_key="task.id", primary_key=True)
    other_id: int = Field(foreign_key="task.id", primary_key=True)


class TaskEvent(SQLModel, table=True):
    """One line of a task's story: a state change, an agent turn, a nudge, a note."""

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id", index=True)
    kind: str
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(nullable=False)


class Nudge(SQLModel, table=True):
    """Steering text for a task; the agent consumes unconsumed nudges at its next turn (but
    not one whose files are still being fetched, nor one whose reply was deleted)."""

    # One nudge per Slack reply, even when two HTTP workers take redeliveries of it at once.
    __table_args__ = (Index("uq_nudge_task_slack_ts", "task_id", "slack_ts", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id", index=True)
    text: str = Field(sa_type=Text)
    author: str
    source: str = "cli"
    slack_ts: str | None = None  # the reply's ts, so the bot can react to it
    created_at: datetime = _ts(nullable=False)
    consumed_at: datetime | None = _ts()
    # A Slack reply's files as Slack described them (untrusted data: ids, names, sizes, types,
    # addresses), written with the reply before the ack; their content is fetched after it.
    files: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    files_pending: bool = False  # not yet fetched: the agent does not take it (storage.tasks)
    deleted_at: datetime | None = _ts()  # the reply was deleted in Slack before the agent read it


class Charge(SQLModel, table=True):
    """What one model call cost, and when: daily budgets sum these by the clock, so a task
    that runs across midnight is charged to each day for what it spent on it. A task's calls
    name the task; a planner's name its plan (`plan_id`, no task), or neither when the
    planner made no plan (`nightcrew plan` failing): the repo's budget counts them all."""

    __table_args__ = (Index("ix_charge_at", "at", "repo"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: int | None = Field(default=None, foreign_key="task.id", index=True)
    plan_id: int | None = Field(default=None, foreign_key="plan.id", index=True)
    repo: str
    model: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost_nanos: int | None = Field(default=None, sa_type=BigInteger)  # None: no price known
    at: datetime = _ts(nullable=False)


class Outbox(SQLModel, table=True):
    """Something that must reach Slack. Written in the same transaction as the change it
    reports; a notifier delivers it later and marks it delivered, so nothing is lost."""

    __table_args__ = (Index("ix_outbox_pending", "delivered_at", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: int | None = Field(default=None, foreign_key="task.id", index=True)
    kind: str
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(nullable=False)
    next_attempt_at: datetime | None = _ts()
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_type=Text)
    delivered_at: datetime | None = _ts()
    # When a post of this row went out with no answer recorded yet: a later attempt looks
    # for it in Slack (by its message metadata) before posting again.
    sent_at: datetime | None = _ts()
    # When the notifier gave the row up (Slack refused it for good, the attempts ran out, or
    # it stayed rate limited past the maximum age): `nightcrew doctor` reports these.
    given_up_at: datetime | None = _ts()


class DigestRun(SQLModel, table=True):
    """A digest sent (queued in the outbox) to one target for one scheduled fire time. The
    unique key is what makes a digest go out once, however many bot processes run."""

    __table_args__ = (UniqueConstraint("target", "fire_at", name="uq_digestrun_target_fire"),)

    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(index=True)  # a Slack channel id, or a user id for a DM
    fire_at: datetime = _ts(nullable=False)
    created_at: datetime = _ts(nullable=False)


class DigestSubscriber(SQLModel, table=True):
    """A person who asked for the digest by DM (`/agent digest subscribe`)."""

    user: str = Field(primary_key=True)
    created_at: datetime = _ts(nullable=False)


class Schedule(SQLModel, table=True):
    """A recurring task: at each fire time of `cron` (in `timezone`) a normal task is queued.
    `last_fired_at` is advanced by compare-and-swap, so a fire time queues one task."""

    id: int | None = Field(default=None, primary_key=True)
    cron: str
    timezone: str
    repo: str
    prompt: str = Field(sa_type=Text)
    channel: str | None = None  # where it was created; its tasks' cards go there
    creator: str
    paused: bool = False
    created_at: datetime = _ts(nullable=False)
    last_fired_at: datetime | None = _ts()
    last_task_id: int | None = None


class SlackDelivery(SQLModel, table=True):
    """A Slack request already acted on, by its key (`trigger:<trigger_id>` for commands,
    clicks and modal submissions, `event:<event_id>` for events) with the answer it got: a
    redelivery or replay of it changes nothing and gets the same answer. In the database, not
    in memory, because HTTP mode's worker processes share nothing else."""

    __tablename__ = "slack_delivery"

    key: str = Field(primary_key=True)
    reply: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(nullable=False, index=True)


class Installation(SQLModel, table=True):
    """One row: this database's random id, made by its migration. Executors and the notifier
    name their sandboxes and Slack posts with it, so two installations sharing a Docker host
    or a Slack workspace never take each other's for their own (a URL can repeat)."""

    id: str = Field(primary_key=True)


def _clean_every_text_column() -> None:
    """Every string and JSON column of every table takes the cleaning types of storage.text,
    so untrusted text cannot be stored with NUL or escape sequences, whoever writes it. The
    database types stay as they were (VARCHAR, TEXT, JSON): no migration."""
    for table in SQLModel.metadata.tables.values():
        for column in table.columns:
            kind = column.type
            if isinstance(kind, SAEnum | CleanString | CleanJSON):
                continue  # an enum stores its own values; already clean
            if isinstance(kind, JSON):
                column.type = CleanJSON()
            elif isinstance(kind, Text):
                column.type = CleanText()
            elif isinstance(kind, String | AutoString):
                column.type = CleanString(getattr(kind, "length", None))


_clean_every_text_column()
