"""Plans in the database: a spec cut into tasks, proposed, edited, queued as a whole in one
transaction (tasks, their prerequisites and the pairs that must not run at once), and the
planning requests from Slack that executors take (see storage/dependencies.py for how the
queued tasks then wait for each other)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import ColumnElement, and_, insert, select, update
from sqlmodel import Session, col

from storage.dependencies import ids_text
from storage.errors import Conflict, StorageError
from storage.lifecycle import State
from storage.models import Outbox, Plan, Task, TaskDependency, TaskExclusion, utcnow
from storage.plan_draft import PlanDraft, paths_overlap
from storage.tasks import create_task, record, transition
from storage.wakeup import announce

# --- plans -------------------------------------------------------------------------------


def create_plan(
    session: Session,
    *,
    repo: str,
    spec: str,
    draft: PlanDraft,
    requester: str,
    source: str = "cli",
    channel: str | None = None,
) -> Plan:
    now = utcnow()
    plan = Plan(
        repo=repo,
        spec=spec,
        title=draft.title,
        proposal=[t.model_dump(mode="json") for t in draft.tasks],
        requester=requester,
        source=source,
        channel=channel,
        created_at=now,
        updated_at=now,
    )
    session.add(plan)
    session.flush()
    return plan


def get_plan(session: Session, plan_id: int) -> Plan:
    plan = session.get(Plan, plan_id, populate_existing=True)
    if plan is None:
        raise PlanNotFound(plan_id)
    return plan


class PlanNotFound(StorageError):
    def __init__(self, plan_id: int) -> None:
        super().__init__(f"no plan {plan_id}")
        self.plan_id = plan_id


def draft_of(plan: Plan) -> PlanDraft:
    """The stored proposal, validated again (it may have been edited since)."""
    return PlanDraft.model_validate({"title": plan.title, "tasks": plan.proposal})


def set_status(session: Session, plan_id: int, status: str, *, was: str = "proposed") -> None:
    """Compare-and-swap the plan's status; Conflict if it is no longer `was` (queued twice
    from two phones, discarded meanwhile)."""
    stmt = (
        update(Plan)
        .where(col(Plan.id) == plan_id, col(Plan.status) == was)
        .values(status=status, updated_at=utcnow())
    )
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        plan = get_plan(session, plan_id)
        raise Conflict(f"plan {plan_id} is {plan.status}, not {was}")


def queue_plan(session: Session, plan_id: int, *, actor: str) -> list[Task]:
    """Every task of the proposed plan, with their prerequisites and exclusions, in the
    caller's transaction: a crash leaves either the whole plan queued or none of it, and the
    status swap makes a second Queue all (a double tap, two people) a Conflict."""
    plan = get_plan(session, plan_id)
    set_status(session, plan_id, "queued")
    draft = draft_of(plan)
    tasks: list[Task] = []
    for number, item in enumerate(draft.tasks, 1):
        paths = ", ".join(item.allowed_paths)
        task = create_task(
            session,
            repo=plan.repo,
            # The agent is told its boundary; the scope check enforces it either way.
            prompt=f"{item.prompt}\n\n(Task {number} of plan {plan_id}; change only: {paths})",
            requester=plan.requester,
            source="plan",
            channel=plan.channel,
        )
        assert task.id is not None
        session.execute(
            update(Task)
            .where(col(Task.id) == task.id)
            .values(plan_id=plan_id, allowed_paths=list(item.allowed_paths))
        )
        record(session, task.id, "planned", {"plan": plan_id, "number": number, "by": actor})
        if item.after:
            ids = [tasks[n - 1].id for n in item.after]
            session.execute(
                insert(TaskDependency),
                [{"task_id": task.id, "prerequisite_id": pid} for pid in ids],
            )
            task = transition(
                session,
                task.id,
                State.WAITING,
                reason=f"waits for {ids_text(ids)} to merge",  # type: ignore[arg-type]
            )
        tasks.append(task)
    pairs = []
    for i in range(1, len(draft.tasks) + 1):
        for j in range(i + 1, len(draft.tasks) + 1):
            related = j in draft.prerequisites(i) or i in draft.prerequisites(j)
            a, b = draft.tasks[i - 1], draft.tasks[j - 1]
            if not related and paths_overlap(a.allowed_paths, b.allowed_paths):
                ti, tj = tasks[i - 1].id, tasks[j - 1].id
                pairs += [{"task_id": ti, "other_id": tj}, {"task_id": tj, "other_id": ti}]
    if pairs:
        session.execute(insert(TaskExclusion), pairs)
    return [session.get(Task, t.id, populate_existing=True) or t for t in tasks]


def edit_proposal(session: Session, plan_id: int, draft: PlanDraft) -> None:
    """A person's edit of a proposed plan (validated by the caller through PlanDraft)."""
    stmt = (
        update(Plan)
        .where(col(Plan.id) == plan_id, col(Plan.status) == "proposed")
        .values(
            title=draft.title,
            proposal=[t.model_dump(mode="json") for t in draft.tasks],
            note=None,  # the cost estimate was for the plan as it was
            updated_at=utcnow(),
        )
    )
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"plan {plan_id} is {get_plan(session, plan_id).status}, not proposed")
    refresh_card(session, get_plan(session, plan_id))


def plan_tasks(session: Session, plan_id: int) -> list[Task]:
    return list(
        session.exec(
            select(Task).where(col(Task.plan_id) == plan_id).order_by(col(Task.id))
        ).scalars()
    )


# --- planning requests (Slack asks; an executor plans) ------------------------------------


def request_plan(
    session: Session,
    *,
    repo: str,
    spec: str,
    requester: str,
    source: str = "slack",
    channel: str | None = None,
) -> Plan:
    """A plan for an executor to make (the bot runs no sandbox). Its card is posted at once,
    saying it is being planned."""
    now = utcnow()
    plan = Plan(
        repo=repo,
        spec=spec,
        status="requested",
        requester=requester,
        source=source,
        channel=channel,
        created_at=now,
        updated_at=now,
    )
    session.add(plan)
    session.flush()
    refresh_card(session, plan)
    announce(session)  # an executor plans it
    return plan


def refresh_card(session: Session, plan: Plan) -> None:
    """Ask the notifier to show the plan's card as it is now (pending rows coalesce)."""
    if plan.channel:
        session.add(Outbox(kind="plan", payload={"plan_id": plan.id}))


def _planning_due(stale_s: float) -> ColumnElement[bool]:
    cutoff = utcnow() - timedelta(seconds=stale_s)
    return (col(Plan.status) == "requested") | and_(
        col(Plan.status) == "planning", col(Plan.updated_at) < cutoff
    )


def planning_due(session: Session, *, stale_s: float) -> bool:
    """Whether any plan waits for a planner: a read, so idle workers' polls take no lock."""
    return (
        session.execute(select(Plan.id).where(_planning_due(stale_s)).limit(1)).first() is not None
    )


def claim_planning(session: Session, worker_id: str, *, stale_s: float) -> Plan | None:
    """Take a requested plan, or one whose planner stopped (`stale_s` without finishing:
    planning writes nothing but the answer, so doing it again is safe)."""
    due = _planning_due(stale_s)
    pick = (
        select(Plan.id)
        .where(due)
        .order_by(col(Plan.id))
        .limit(1)
        .with_for_update(skip_locked=True, key_share=True)  # as the task claim (queue.py)
        .scalar_subquery()
    )
    stmt = (
        update(Plan)
        .where(col(Plan.id) == pick, due)
        .values(status="planning", worker_id=worker_id, updated_at=utcnow())
        .returning(Plan)
    )
    return session.execute(stmt, execution_options={"populate_existing": True}).scalar()


def finish_planning(
    session: Session,
    plan_id: int,
    worker_id: str,
    *,
    draft: PlanDraft | None,
    error: str | None = None,
    note: str | None = None,
) -> bool:
    """Record the planner's plan (proposed) or why it had none (failed), if this worker still
    holds the plan; False if another took it over meanwhile."""
    values: dict[str, object] = {"worker_id": None, "updated_at": utcnow(), "feedback": None}
    if draft is not None:
        values |= {
            "status": "proposed",
            "title": draft.title,
            "proposal": [t.model_dump(mode="json") for t in draft.tasks],
            "error": None,
            "note": note,
        }
    else:
        values |= {"status": "failed", "error": error}
    stmt = (
        update(Plan)
        .where(
            col(Plan.id) == plan_id,
            col(Plan.status) == "planning",
            col(Plan.worker_id) == worker_id,
        )
        .values(**values)
        .returning(Plan)
    )
    plan = session.execute(stmt, execution_options={"populate_existing": True}).scalar()
    if plan is not None:
        refresh_card(session, plan)
    return plan is not None


def replan(session: Session, plan_id: int, feedback: str) -> Plan:
    """Plan again with a person's feedback (a reply on the plan's card)."""
    plan = get_plan(session, plan_id)
    stmt = (
        update(Plan)
        .where(col(Plan.id) == plan_id, col(Plan.status).in_(["proposed", "failed"]))
        .values(status="requested", feedback=feedback, updated_at=utcnow())
    )
    if session.execute(stmt).rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict(f"plan {plan_id} is {plan.status}; only a proposed plan can be re-planned")
    plan = get_plan(session, plan_id)
    refresh_card(session, plan)
    announce(session)  # an executor plans it again
    return plan
