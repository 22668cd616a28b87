"""What a person can do to plans, whatever the front end: queue all of it, discard it, plan
it again with feedback, ask for one (Slack: an executor plans it). As bot/actions.py: each
validates, writes in the caller's transaction, returns a message or raises ActionError."""

from __future__ import annotations

from collections.abc import Collection

from sqlmodel import Session

from bot.actions import ActionError, clean_text
from storage.errors import Conflict
from storage.models import Plan
from storage.plans import (
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
