"""What the pages show, read from the database and rendered with Jinja2 (autoescape on: every
text an agent, a model or a person wrote is escaped; the only markup taken as is comes from
Pygments, see diffview)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlmodel import Session, col, select

from bot.links import Signer
from bot.review import Entry
from bot.web import diffview, plangraph
from bot.web.secrets import Redactor
from executor.costs.pricing import cost_text
from storage.lifecycle import CLOSED, State
from storage.models import Nudge, Plan, Task, TaskDependency, TaskEvent, utcnow
from storage.plans import plan_tasks
from storage.spend import spent_on_plan

TEMPLATES = Path(__file__).with_name("templates")
LIVE = {s.value for s in State if s not in CLOSED and s is not State.AWAITING_APPROVAL}
_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["redact"] = Redactor()  # replaced by `keep_secrets` with this host's values


def keep_secrets(values: Iterable[str | None]) -> None:
    """The values pages must never show (bot/web/secrets.py), set once at start."""
    _env.filters["redact"] = Redactor(values)


_env.globals["diff_css"] = diffview.css()


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value else "—"


_env.filters["when"] = _when


@dataclass
class TaskView:
    task: Task
    events: list[TaskEvent]
    nudges: list[Nudge]
    proof: dict[str, Any]
    diff: dict[str, Any]
    files: list[diffview.FileDiff]
    interdiff: list[diffview.FileDiff]
    checks: list[dict[str, Any]]
    approvals: list[TaskEvent]
    diff_event_id: int = 0

    @property
    def pending(self) -> list[diffview.FileDiff]:
        """The diff's files shown plain, whose highlighted rows the page fetches."""
        return [f for f in self.files if not f.highlighted and not f.binary]

    @property
    def turns(self) -> list[TaskEvent]:
        return [e for e in self.events if e.kind == "turn"]

    @property
    def last_event_id(self) -> int:
        return max((e.id or 0 for e in self.events), default=0)

    @property
    def live(self) -> bool:
        return State(self.task.state).value in LIVE

    def finding_anchor(self, finding: dict[str, Any]) -> str | None:
        """Where in the diff a review finding points: the file, and its line if shown."""
        name = str(finding.get("file") or "")
        for file in self.files:
            if file.path == name or file.old_path == name:
                line = finding.get("line")
                if isinstance(line, int) and line in file.new_lines:
                    return f"{file.anchor}-n{line}"
                return file.anchor
        return None


def _latest(events: list[TaskEvent], kind: str) -> dict[str, Any]:
    for event in reversed(events):
        if event.kind == kind:
            return event.payload
    return {}


def load_task(session: Session, task_id: int) -> TaskView | None:
    task = session.get(Task, task_id)
    if task is None:
        return None
    events = list(
        session.exec(
            select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(col(TaskEvent.id))
        ).all()
    )
    nudges = list(
        session.exec(select(Nudge).where(Nudge.task_id == task_id).order_by(col(Nudge.id))).all()
    )
    proof = _latest(events, "proof")
    diff_event = next((e for e in reversed(events) if e.kind == "diff"), None)
    diff = diff_event.payload if diff_event else {}
    diff_text = str(diff.get("diff") or "")
    since = proof.get("since_approval") or {}
    approvals = [
        e
        for e in events
        if e.kind == "state"
        and (e.payload.get("from") == "awaiting_approval" or e.payload.get("to") == "merging")
    ]
    checks = [e.payload for e in events if e.kind == "checks"]
    return TaskView(
        task=task,
        events=events,
        nudges=nudges,
        proof=proof,
        diff=diff,
        files=diffview.for_page(
            diffview.key_of((diff_event.id or 0) if diff_event else 0, diff_text), diff_text
        ),
        interdiff=diffview.parse(str(since.get("diff") or ""), budget=diffview.INLINE_LINES),
        checks=checks,
        approvals=approvals,
        diff_event_id=(diff_event.id or 0) if diff_event else 0,
    )


def diff_file(session: Session, task_id: int, event_id: int, index: int) -> str | None:
    """One file of a task's recorded diff as highlighted rows (the page's fragment), or None
    when the event is not that task's diff or has no such file."""
    event = session.get(TaskEvent, event_id)
    if event is None or event.task_id != task_id or event.kind != "diff":
        return None
    text = str(event.payload.get("diff") or "")
    file = diffview.highlight_file(diffview.key_of(event_id, text), text, index)
    return None if file is None else str(file.table(""))


def prepare() -> None:
    """What the first page would otherwise pay for, done when the server starts: the
    templates compiled, Pygments' lexer table and the common lexers loaded."""
    for name in ("task.html", "log.html", "review.html", "forbidden.html", "_diff.html"):
        _env.get_template(name)
    diffview.parse(
        "".join(
            f"diff --git a/x.{ext} b/x.{ext}\n--- a/x.{ext}\n+++ b/x.{ext}\n@@ -0,0 +1 @@\n+x\n"
            for ext in ("py", "js", "ts", "go", "rs", "java", "md", "yaml", "json", "toml", "sh")
        )
    )


def warm(session: Session, task_id: int) -> None:
    """Parse and highlight the task's newest diff ahead of the first view (the notifier calls
    this when a task parks): a big diff's first highlighting takes most of a second."""
    load_task(session, task_id)


def task_page(view: TaskView, *, query: str) -> str:
    return _env.get_template("task.html").render(
        v=view,
        t=view.task,
        state=State(view.task.state).value,
        cost=cost_text(view.task.cost_nanos, view.task.unpriced_tokens),
        query=query,
        now=utcnow(),
    )


def log_entries(events: list[TaskEvent]) -> str:
    """The log lines for `events` (new ones, for a live page)."""
    return _env.get_template("log.html").render(events=events)


def review_page(entries: list[Entry], *, signer: Signer, user: str) -> str:
    # Relative: the page is on the same server as the tasks' pages, whatever its address.
    links = {
        e.task.id: f"/t/{e.task.id}?{signer.query(f'task:{e.task.id}', user)}" for e in entries
    }
    return _env.get_template("review.html").render(entries=entries, links=links, user=user)


@dataclass
class PlanNode:
    """One task of a plan: a queued plan's task (`key` its id, `state` its state) or a
    proposal's (`key` its number in the plan, no state yet)."""

    key: int
    label: str
    prompt: str
    size: str
    paths: list[str]
    after: list[int]  # keys of its prerequisites in the plan
    outside: list[int]  # task ids it waits for outside the plan (`add --after`)
    state: str | None = None
    link: str | None = None


@dataclass
class PlanView:
    plan: Plan
    nodes: list[PlanNode]
    graph: plangraph.Layout
    cost: str | None  # the tasks' cost so far, once queued
    planning: str  # what the planner's runs cost (the ledger's rows for this plan)

    def label(self, key: int) -> str:
        return next((n.label for n in self.nodes if n.key == key), str(key))


def load_plan(
    session: Session, plan_id: int, *, signer: Signer, user: str, expires: int
) -> PlanView | None:
    """The plan with its tasks (or its proposal), each task linked to its page by a link
    for the same person that expires with the plan's link."""
    plan = session.get(Plan, plan_id)
    if plan is None:
        return None
    tasks = plan_tasks(session, plan_id)
    nodes: list[PlanNode] = []
    if tasks:
        ids = [t.id or 0 for t in tasks]
        edges = session.exec(
            select(TaskDependency).where(col(TaskDependency.task_id).in_(ids))
        ).all()
        prereqs: dict[int, list[int]] = {}
        for edge in edges:
            prereqs.setdefault(edge.task_id, []).append(edge.prerequisite_id)
        for t in tasks:
            tid = t.id or 0
            before = sorted(prereqs.get(tid, []))
            query = signer.query(f"task:{tid}", user, expires=expires)
            nodes.append(
                PlanNode(
                    key=tid,
                    label=f"#{tid}",
                    prompt=t.prompt,
                    size="",
                    paths=list(t.allowed_paths or []),
                    after=[p for p in before if p in ids],
                    outside=[p for p in before if p not in ids],
                    state=State(t.state).value,
                    link=f"/t/{tid}?{query}",  # relative: same server, whatever its address
                )
            )
    else:
        for number, item in enumerate(plan.proposal, 1):
            nodes.append(
                PlanNode(
                    key=number,
                    label=str(number),
                    prompt=str(item.get("prompt") or ""),
                    size=str(item.get("size") or ""),
                    paths=[str(x) for x in item.get("allowed_paths") or []],
                    after=[int(a) for a in item.get("after") or [] if isinstance(a, int)],
                    outside=[],
                )
            )
    graph = plangraph.layout([n.key for n in nodes], {n.key: n.after for n in nodes})
    cost = (
        cost_text(sum(t.cost_nanos for t in tasks), sum(t.unpriced_tokens for t in tasks))
        if tasks
        else None
    )
    planned = spent_on_plan(session, plan_id)
    return PlanView(
        plan, nodes, graph, cost, cost_text(planned.cost_nanos, planned.unpriced_tokens)
    )


def plan_page(view: PlanView) -> str:
    return _env.get_template("plan.html").render(v=view, p=view.plan)


def forbidden_page() -> str:
    return _env.get_template("forbidden.html").render()
