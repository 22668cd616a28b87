"""What a person can do to plans, whatever the front end: queue all of it, discard it, plan
it again with feedback, ask for one (Slack: an executor plans it). As bot/actions.py: each
validates, writes in the caller's transaction, returns a message or raises ActionError."""

from __future__ import annotations

from collections.abc import Collection

import yaml
from pydantic import ValidationError
from sqlmodel import Session

from bot.actions import ActionError, clean_text
from storage.errors import Conflict
from storage.models import Plan
from storage.plan_draft import PlanDraft, problem
from storage.plans import (
    edit_proposal,
    get_plan,
    queue_plan,
    refresh_card,
    replan,
    request_plan,
    set_status,
)


def check_may_decide(plan: Plan, actor: str, approvers: Collection[str], verb: str) -> None:
    if actor != plan.requester and actor not in approvers:
        raise ActionError(
            f"only the requester or an approver of plan {plan.id} may {verb} it"
            f" (requested by {plan.requester})"
        )


def request(session: Session, *, repo: str, spec: str, requester: str, channel: str | None) -> Plan:
    text = clean_text(spec, what="spec")
    return request_plan(session, repo=repo, spec=text, requester=requester, channel=channel)


def queue_all(
    session: Session, plan_id: int, *, actor: str, approvers: Collection[str] = ()
) -> str:
    plan = get_plan(session, plan_id)
    check_may_decide(plan, actor, approvers, "queue")
    try:
        tasks = queue_plan(session, plan_id, actor=actor)
    except Conflict as exc:
        raise ActionError(str(exc)) from None
    refresh_card(session, get_plan(session, plan_id))
    ids = ", ".join(f"#{t.id}" for t in tasks)
    return f"queued plan {plan_id}: tasks {ids}"


def discard(session: Session, plan_id: int, *, actor: str, approvers: Collection[str] = ()) -> str:
    plan = get_plan(session, plan_id)
    check_may_decide(plan, actor, approvers, "discard")
    if plan.status not in ("proposed", "failed"):
        raise ActionError(f"plan {plan_id} is {plan.status}; only a proposal can be discarded")
    try:
        set_status(session, plan_id, "discarded", was=plan.status)
    except Conflict as exc:
        raise ActionError(str(exc)) from None
    refresh_card(session, get_plan(session, plan_id))
    return f"discarded plan {plan_id}"


def edit_text(plan: Plan) -> str:
    """The proposal as YAML for the Edit modal: what people change, drop or add."""
    tasks = [{k: v for k, v in t.items() if k != "after" or v} for t in plan.proposal]
    return yaml.safe_dump(
        {"title": plan.title, "tasks": tasks}, sort_keys=False, allow_unicode=True, width=1000
    )


def edit(
    session: Session, plan_id: int, text: str, *, actor: str, approvers: Collection[str] = ()
) -> str:
    """Replace a proposed plan's tasks with the edited YAML, validated as the planner's answer
    is (people's text is untrusted too); refused with the first problem, writing nothing."""
    plan = get_plan(session, plan_id)
    check_may_decide(plan, actor, approvers, "edit")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ActionError(f"that is not YAML{where}; keep the layout of the plan") from None
    try:
        draft = PlanDraft.model_validate(data)
    except ValidationError as exc:
        raise ActionError(problem(exc)) from None
    try:
        edit_proposal(session, plan_id, draft)
    except Conflict as exc:
        raise ActionError(str(exc)) from None
    return f"plan {plan_id} now has {len(draft.tasks)} tasks"


def feedback(
    session: Session, plan_id: int, text: str, *, actor: str, approvers: Collection[str] = ()
) -> str:
    plan = get_plan(session, plan_id)
    check_may_decide(plan, actor, approvers, "re-plan")
    note = clean_text(text, what="feedback")
    try:
        replan(session, plan_id, f"{actor}: {note}")
    except Conflict as exc:
        raise ActionError(str(exc)) from None
    return f"re-planning plan {plan_id} with your feedback"
