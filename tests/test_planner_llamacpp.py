"""The planner against a real small model (SmolLM2-135M on llama.cpp): whatever it says, the
result is a plan that validates or a clear PlanUnusable, never a crash and never a plan in
the database unless it validated (queued whole, in one transaction)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, func
from sqlmodel import select

from executor.agents.planner import PlanUnusable
from storage.db import transaction
from storage.models import Task
from storage.plan_draft import PlanDraft
from storage.plans import create_plan, queue_plan
from tests.test_llm_llamacpp import llama_url  # noqa: F401  (the server fixture)
from tests.test_planner import run_planner  # noqa: F401  (the sandboxed planner fixture)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_real_small_model_gives_a_valid_plan_or_a_clear_error(
    llama_url: str,  # noqa: F811
    run_planner: Any,  # noqa: F811
    engine: Engine,
) -> None:
    try:
        planned = run_planner(llama_url, max_turns=1, options={"max_tokens": 64, "temperature": 0})
    except PlanUnusable as exc:
        assert str(exc).startswith(("the planner's answer was unusable: ", "the planner's model"))
        with transaction(engine) as s:
            assert s.exec(select(func.count()).select_from(Task)).one() == 0
        return
    assert isinstance(planned.draft, PlanDraft)  # validated: queueing it queues all of it
    with transaction(engine) as s:
        plan = create_plan(s, repo="app", spec="spec", draft=planned.draft, requester="U1")
        tasks = queue_plan(s, plan.id or 0, actor="U1")
    assert len(tasks) == len(planned.draft.tasks)
