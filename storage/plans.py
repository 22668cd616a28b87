"""Plans and dependencies in the database: tasks that wait for other tasks to merge, plans
queued as a whole in one transaction, and `settle`, which moves waiting tasks along.

A task with prerequisites is `waiting` until every prerequisite is `merged`; then `settle`
queues it (the worker calls it in its claim transaction), so it starts from a base branch
that holds their merges. A prerequisite that failed, was rejected or cancelled parks its
dependents in `needs_input` with the reason; `drop_prerequisites` ("run anyway") lets them
go. Nothing here is a second source of truth: the claim (storage/queue.py) re-checks the
prerequisites itself, so a crash between any two steps cannot start a task early or twice."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import timedelta

from sqlalchemy import ColumnElement, and_, delete, exists, insert, select, update
from sqlalchemy.orm import aliased
from sqlmodel import Session, col

from storage.defaults import MAX_PREREQUISITES
from storage.errors import Conflict, StorageError
from storage.lifecycle import WORKING, IllegalTransition, State
from storage.models import Outbox, Plan, Task, TaskDependency, TaskExclusion, utcnow
from storage.plan_draft import PlanDraft, find_cycle, paths_overlap
from storage.tasks import create_task, record, transition

# A prerequisite in one of these will not merge unless a person acts: its dependents park.
DEAD: frozenset[State] = frozenset({State.FAILED, State.CANCELLED, State.REJECTED})

_Prereq = aliased(Task, name="prereq")
# In a parked dependent's reason; front ends offer the "Run anyway" choice on seeing it.
RUN_ANYWAY_HINT = "run it anyway"


class BadDependency(StorageError):
    """`--after` named something a task cannot wait for; nothing was written."""


def unmerged_prerequisite() -> ColumnElement[bool]:
    """True for a task (the `task` table in the enclosing query) with a prerequisite that is
    not merged yet: the claim's and settle's one definition of "must still wait"."""
    return exists(
        select(1)
        .select_from(TaskDependency)
        .join(_Prereq, col(_Prereq.id) == col(TaskDependency.prerequisite_id))
        .where(col(TaskDependency.task_id) == col(Task.id), col(_Prereq.state) != State.MERGED)
    )


def _dead_prerequisite() -> ColumnElement[bool]:
    return exists(
        select(1)
        .select_from(TaskDependency)
        .join(_Prereq, col(_Prereq.id) == col(TaskDependency.prerequisite_id))
        .where(col(TaskDependency.task_id) == col(Task.id), col(_Prereq.state).in_(list(DEAD)))
    )


def prerequisites(session: Session, task_id: int) -> list[Task]:
    rows = session.execute(
        select(_Prereq)
        .join(TaskDependency, col(TaskDependency.prerequisite_id) == col(_Prereq.id))
        .where(col(TaskDependency.task_id) == task_id)
        .order_by(col(_Prereq.id))
    ).scalars()
    return list(rows)


def dependents(session: Session, task_id: int) -> list[int]:
    rows = session.execute(
        select(TaskDependency.task_id)
        .where(col(TaskDependency.prerequisite_id) == task_id)
        .order_by(col(TaskDependency.task_id))
    ).scalars()
    return list(rows)


def _ids(ids: Collection[int]) -> str:
    return ", ".join(f"#{i}" for i in sorted(ids))


def add_prerequisites(session: Session, task: Task, after: Sequence[int]) -> Task:
    """Make the new `task` wait for `after` (ids of tasks of the same repo, not rejected or
    cancelled); refused with a clear message (BadDependency) when one cannot be waited for or
    would close a circle. Moves the task to `waiting` unless all are merged already."""
    assert task.id is not None
    wanted = sorted(set(after))
    if len(wanted) > MAX_PREREQUISITES:
        raise BadDependency(f"a task may wait for at most {MAX_PREREQUISITES} others")
    if task.id in wanted:
        raise BadDependency(f"task {task.id} cannot come after itself")
    found = {
        t.id: t for t in session.execute(select(Task).where(col(Task.id).in_(wanted))).scalars()
    }
    for pid in wanted:
        pre = found.get(pid)
        if pre is None:
            raise BadDependency(f"--after {pid}: there is no task {pid}")
        if pre.repo != task.repo:
            raise BadDependency(
                f"--after {pid}: task {pid} is on {pre.repo}, this one on {task.repo};"
                " merge order only means something within one repo"
            )
        if State(pre.state) in (State.REJECTED, State.CANCELLED):
            raise BadDependency(f"--after {pid}: task {pid} is {pre.state}; it will never merge")
    _refuse_cycle(session, task.id, wanted)
    if wanted:
        session.execute(
            insert(TaskDependency),
            [{"task_id": task.id, "prerequisite_id": pid} for pid in wanted],
        )
    record(session, task.id, "prerequisites", {"after": wanted})
    unmerged = [pid for pid in wanted if State(found[pid].state) is not State.MERGED]
    if unmerged:
        task = transition(
            session, task.id, State.WAITING, reason=f"waits for {_ids(unmerged)} to merge"
        )
    return task


def _refuse_cycle(session: Session, task_id: int, wanted: list[int]) -> None:
    """Walk the prerequisites of `wanted` (in the database) looking for `task_id`."""
    graph: dict[int, list[int]] = {task_id: list(wanted)}
    todo = list(wanted)
    while todo:
        rows = session.execute(
            select(TaskDependency.task_id, TaskDependency.prerequisite_id).where(
                col(TaskDependency.task_id).in_(todo)
            )
        ).all()
        todo = []
        for tid, pid in rows:
            graph.setdefault(tid, []).append(pid)
            if pid not in graph:
                graph.setdefault(pid, [])
                todo.append(pid)
    cycle = find_cycle(graph)
    if cycle:
        raise BadDependency("that would make tasks wait for each other: " + " -> ".join(cycle))


def drop_prerequisites(session: Session, task_id: int) -> list[int]:
    """ "Run anyway": the task no longer waits for (nor merges after) anything."""
    dropped = list(
        session.execute(
            delete(TaskDependency)
            .where(col(TaskDependency.task_id) == task_id)
            .returning(col(TaskDependency.prerequisite_id))
        ).scalars()
    )
    if dropped:
        record(session, task_id, "prerequisites_dropped", {"after": sorted(dropped)})
    return dropped


def settle(session: Session) -> int:
    """Move tasks along their prerequisites; returns how many moved. Idempotent, and each
    move is a conditional transition: two executors settling at once move a task once.
    - waiting, every prerequisite merged -> queued (it starts from the base holding them);
    - waiting or unclaimed approved merge, a prerequisite failed/rejected/cancelled ->
      needs_input, saying which, and what the person can do;
    - queued (re-queued by a retry or a reply) with a prerequisite not merged -> waiting."""
    moved = 0
    ready = select(Task.id).where(
        col(Task.state) == State.WAITING, ~unmerged_prerequisite(), ~_dead_prerequisite()
    )
    for tid in list(session.execute(ready).scalars()):
        moved += _move(session, tid, State.QUEUED, "its prerequisites are merged", State.WAITING)
    stuck = select(Task.id, Task.state).where(
        _dead_prerequisite(),
        (col(Task.state) == State.WAITING)
        | and_(col(Task.state) == State.MERGING, col(Task.worker_id).is_(None)),
    )
    for tid, state in list(session.execute(stuck).all()):
        dead = [p for p in prerequisites(session, tid) if State(p.state) in DEAD]
        why = "; ".join(f"prerequisite #{p.id} {p.state}" for p in dead)
        reason = f"{why}: {RUN_ANYWAY_HINT} on the current base, or cancel it"
        moved += _move(session, tid, State.NEEDS_INPUT, reason, State(state))
    requeued = select(Task.id).where(col(Task.state) == State.QUEUED, unmerged_prerequisite())
    for tid in list(session.execute(requeued).scalars()):
        pending = [p.id for p in prerequisites(session, tid) if p.state is not State.MERGED]
        reason = f"waits for {_ids([p for p in pending if p is not None])} to merge"
        moved += _move(session, tid, State.WAITING, reason, State.QUEUED)
    return moved


def _move(session: Session, task_id: int, to: State, reason: str, src: State) -> int:
    # Still as judged: in `src`, and (a merge) still unclaimed.
    where = [col(Task.state) == src, col(Task.worker_id).is_(None)]
    try:
        transition(session, task_id, to, reason=reason, actor="dependencies", where=where)
    except (Conflict, IllegalTransition):
        return 0  # another executor moved it first (perhaps on, where this move is illegal)
    return 1


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
                reason=f"waits for {_ids(ids)} to merge",  # type: ignore[arg-type]
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


def exclusive_running() -> ColumnElement[bool]:
    """True for a task (the `task` table in the enclosing query) that shares paths with a
    task of its plan that holds a worker now: it must not start beside it."""
    other = aliased(Task, name="other")
    return exists(
        select(1)
        .select_from(TaskExclusion)
        .join(other, col(other.id) == col(TaskExclusion.other_id))
        .where(col(TaskExclusion.task_id) == col(Task.id), col(other.state).in_(list(WORKING)))
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
        .with_for_update(skip_locked=True)
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
    return plan
