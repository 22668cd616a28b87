"""A plan run by a real worker (Docker, git, a scripted model): the issue's four tasks, two
independent and two after the first. The independent ones run and park; the dependents wait,
then start from a base holding the first one's merge; approving in any order merges all four
with every prerequisite first."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from bot import actions
from storage.db import transaction
from storage.lifecycle import State
from storage.plan_draft import PlanDraft
from storage.plans import create_plan, queue_plan
from tests.conftest import git
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.worker_fixtures import RunWorker, task

SUB = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
PLAN = PlanDraft.model_validate(
    {
        "title": "subtraction",
        "tasks": [
            {"prompt": "add sub()", "allowed_paths": ["calc.py"]},
            {"prompt": "document calc", "allowed_paths": ["docs/**"]},
            {"prompt": "test sub()", "allowed_paths": ["test_sub.py"], "after": [1]},
            {"prompt": "sub in the cli", "allowed_paths": ["cli.py"], "after": [1]},
        ],
    }
)


def write_and_finish(path: str, content: str) -> list:
    return [
        reply(tool_call("write_file", {"path": path, "content": content})),
        reply(tool_call("finish", {"summary": f"wrote {path}"})),
    ]


def approve(engine: Engine, *task_ids: int) -> None:
    for task_id in task_ids:
        with transaction(engine) as s:
            actions.approve(s, task_id, actor="U1")


def test_a_plan_runs_in_parallel_where_it_may_and_merges_in_dependency_order(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    with transaction(engine) as s:
        plan = create_plan(s, repo="app", spec="subtraction", draft=PLAN, requester="U1")
        one, two, three, four = [t.id or 0 for t in queue_plan(s, plan.id or 0, actor="U1")]
    first = [*write_and_finish("calc.py", SUB), *write_and_finish("docs/calc.md", "# calc\n")]
    with ScriptedLLM(first) as llm:
        assert make_worker(llm).work(drain=True) == 2  # the dependents wait
    assert [task(engine, t).state for t in (one, two, three, four)] == [
        State.AWAITING_APPROVAL,
        State.AWAITING_APPROVAL,
        State.WAITING,
        State.WAITING,
    ]
    approve(engine, two, one)  # any order
    then = [
        reply(tool_call("bash", {"command": "grep -c 'def sub' calc.py"})),
        *write_and_finish("test_sub.py", "from calc import sub\n"),
        *write_and_finish("cli.py", "from calc import sub\n"),
    ]
    with ScriptedLLM(then) as llm:
        # Two merges, then the two dependents, queued once their prerequisite merged.
        assert make_worker(llm).work(drain=True) == 4
        seen = [m["content"] for m in llm.requests[1]["messages"] if m["role"] == "tool"]
    assert seen[0].startswith("exit code 0") and seen[0].strip().endswith("1")  # `def sub` there
    first_merge = task(engine, one).merge_commit
    assert first_merge is not None
    for dependent in (three, four):
        done = task(engine, dependent)
        assert done.state is State.AWAITING_APPROVAL, done.reason
        # It started from the base as it was after its prerequisite merged.
        git(project, "merge-base", "--is-ancestor", first_merge, done.base_commit or "")
    approve(engine, four, three)
    with ScriptedLLM([]) as llm:
        assert make_worker(llm).work(drain=True) == 2
    assert {task(engine, t).state for t in (one, two, three, four)} == {State.MERGED}
    log = git(project, "log", "--format=%H", "main").split()
    order = [log.index(task(engine, t).merge_commit or "") for t in (one, three, four)]
    assert order[0] > order[1] and order[0] > order[2]  # the prerequisite is older


def test_a_worker_plans_a_requested_plan_or_records_why_not(
    engine: Engine, make_worker: RunWorker
) -> None:
    from storage.plans import get_plan, request_plan
    from tests.test_planner import FOUR

    with transaction(engine) as s:
        request_plan(s, repo="app", spec="subtraction", requester="U1", channel="C1")
        request_plan(s, repo="app", spec="again", requester="U1", channel="C1")
    with ScriptedLLM([reply(tool_call("submit_plan", FOUR)), *[reply(content="no")] * 3]) as llm:
        worker = make_worker(
            llm,
            max_cost_usd=4,
            config_options={"budgets": {"daily_usd": 5}},
        )
        assert worker.plan_once() and worker.plan_once()
        assert not worker.plan_once()  # nothing left: a read, no claim
    with transaction(engine) as s:
        good, bad = get_plan(s, 1), get_plan(s, 2)
    assert (good.status, len(good.proposal), good.worker_id) == ("proposed", 4, None)
    assert good.note and "more than the $5.00 left of today's budget" in good.note
    assert bad.status == "failed"
    assert bad.error == (
        "the planner's answer was unusable: the answer was neither a submit_plan call nor a"
        " JSON plan"
    )


def test_a_hostile_agent_of_a_planned_task_cannot_leave_its_own_paths(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    """The repo allows everything; the plan gave this task docs/** only. The agent edits
    calc.py anyway and insists: it is sent back, then parked; nothing reaches the base."""
    base = git(project, "rev-parse", "main")
    docs_only = PlanDraft.model_validate(
        {"title": "docs", "tasks": [{"prompt": "document calc", "allowed_paths": ["docs/**"]}]}
    )
    with transaction(engine) as s:
        plan = create_plan(s, repo="app", spec="docs", draft=docs_only, requester="U1")
        (task_id,) = [t.id or 0 for t in queue_plan(s, plan.id or 0, actor="U1")]
    script = [
        reply(tool_call("write_file", {"path": "calc.py", "content": "import os\n"})),
        *[reply(tool_call("finish", {"summary": "documented"}))] * 4,
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm).work(drain=True)
        told = [m["content"] for m in llm.requests[2]["messages"] if m["role"] == "user"]
    assert "Task 1 of plan 1; change only: docs/**" in llm.requests[0]["messages"][1]["content"]
    assert any("docs/**" in t and "calc.py" in t for t in told)  # the scope feedback
    parked = task(engine, task_id)
    assert parked.state is State.NEEDS_INPUT
    assert parked.reason == "changed files outside allowed_paths: calc.py (after 3 rounds)"
    assert git(project, "rev-parse", "main") == base


def test_a_workers_planner_run_is_charged_and_a_spent_budget_plans_nothing(
    engine: Engine, make_worker: RunWorker
) -> None:
    """A plan asked for in Slack is planned by a worker: its model calls are on the ledger
    under the plan (today's budget and the digest count them); once the day's budget is
    spent, the next requested plan fails with the reason and the model is not called."""
    from sqlmodel import select

    from storage.digests import collect
    from storage.models import Charge
    from storage.plans import get_plan, request_plan
    from storage.spend import spent_on_plan
    from tests.test_planner import FOUR

    with transaction(engine) as s:
        request_plan(s, repo="app", spec="subtraction", requester="U1", channel="C1")
    options = {
        "prices": {"scripted-model": {"prompt": 2, "completion": 10}},
        "budgets": {"daily_usd": 5},
    }
    usage = (1_000_000, 400_000)  # $2 + $4
    with ScriptedLLM([reply(tool_call("submit_plan", FOUR), usage=usage)]) as llm:
        worker = make_worker(llm, config_options=options)
        assert worker.plan_once()
    with transaction(engine) as s:
        rows = s.exec(select(Charge)).all()
        assert [(r.plan_id, r.task_id, r.repo, r.tokens_in) for r in rows] == [
            (1, None, "app", 1_000_000)
        ]
        assert spent_on_plan(s, 1).cost_nanos == 6_000_000_000
        _, budgets = worker.books.today(s)
        assert budgets[0].reached
        digest = collect(s, since=rows[0].at.replace(year=2000), until=rows[0].at)
    assert digest.totals.cost_nanos == 6_000_000_000
    with transaction(engine) as s:
        request_plan(s, repo="app", spec="multiplication", requester="U1", channel="C1")
    with ScriptedLLM([reply(tool_call("submit_plan", FOUR))]) as llm:
        assert make_worker(llm, config_options=options).plan_once()
        assert llm.requests == []
    with transaction(engine) as s:
        refused = get_plan(s, 2)
    assert refused.status == "failed"
    assert refused.error and refused.error.startswith(
        "no new plan: daily budget reached for all repos: $6.00 of $5.00 spent today"
    )
