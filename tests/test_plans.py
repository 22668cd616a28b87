"""Dependencies and plans in storage: waiting until prerequisites merge, parking when one
fails, run-anyway, overlapping paths never running at once, merges in dependency order, and a
plan queued whole or not at all (even when its process is killed mid-way)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, func
from sqlmodel import select

from bot import actions
from storage.db import transaction
from storage.dependencies import settle
from storage.errors import Conflict
from storage.lifecycle import State
from storage.models import Plan, Task, TaskExclusion
from storage.plan_draft import PlanDraft, paths_overlap
from storage.plans import create_plan, get_plan, plan_tasks, queue_plan
from storage.queue import claim_next
from storage.tasks import create_task, get_task, transition

S = State
TO_APPROVAL = [S.PREPARING, S.RUNNING, S.AWAITING_APPROVAL]


def draft(*tasks: tuple[str, list[str], list[int]], title: str = "cut") -> PlanDraft:
    return PlanDraft.model_validate(
        {
            "title": title,
            "tasks": [{"prompt": p, "allowed_paths": paths, "after": a} for p, paths, a in tasks],
        }
    )


# Two independent tasks, two depending on the first: the example plan.
FOUR = draft(
    ("add the model", ["app/models/**"], []),
    ("docs", ["docs/**"], []),
    ("api on the model", ["app/api/**"], [1]),
    ("cli on the model", ["app/cli/**"], [1]),
)


def queued_plan(engine: Engine, d: PlanDraft = FOUR) -> list[int]:
    with transaction(engine) as s:
        plan = create_plan(s, repo="app", spec="spec", draft=d, requester="U1")
        assert plan.id is not None
        return [t.id for t in queue_plan(s, plan.id, actor="U1") if t.id is not None]


def claim(engine: Engine, worker: str = "w1") -> int | None:
    with transaction(engine) as s:
        settle(s)
        task = claim_next(s, worker)
        return task.id if task else None


def walk(engine: Engine, task_id: int, *states: State) -> None:
    for state in states:
        with transaction(engine) as s:
            transition(s, task_id, state, actor="test")


def state(engine: Engine, task_id: int) -> State:
    with transaction(engine) as s:
        return State(get_task(s, task_id).state)


def merge(engine: Engine, task_id: int) -> None:
    with transaction(engine) as s:
        actions.approve(s, task_id, actor="U1")
    assert claim(engine) == task_id  # the merge is claimed
    walk(engine, task_id, S.MERGED)


def test_dependents_wait_then_start_after_their_prerequisite_merges(engine: Engine) -> None:
    one, two, three, four = queued_plan(engine)
    assert [state(engine, t) for t in (one, two, three, four)] == [
        S.QUEUED,
        S.QUEUED,
        S.WAITING,
        S.WAITING,
    ]
    assert {claim(engine), claim(engine)} == {one, two}  # the independent ones at once
    assert claim(engine) is None  # the dependents wait
    walk(engine, one, S.RUNNING, S.AWAITING_APPROVAL)
    assert claim(engine) is None  # parked for approval is not merged
    merge(engine, one)
    assert {claim(engine), claim(engine)} == {three, four}
    with transaction(engine) as s:
        plan_id = get_task(s, three).plan_id
        assert [t.id for t in plan_tasks(s, plan_id or 0)] == [one, two, three, four]


def test_approving_a_dependent_early_queues_its_merge_until_the_prerequisite_merged(
    engine: Engine,
) -> None:
    one, _two, three, _four = queued_plan(engine)
    # "Run anyway" aside, a dependent parks early only if walked there by hand: the merge
    # gate must hold anyway (belt and braces in the claim).
    walk(engine, three, S.QUEUED, *TO_APPROVAL)
    walk(engine, one, *TO_APPROVAL)
    with transaction(engine) as s:
        out = actions.approve(s, three, actor="U1")
    assert f"merges after #{one}" in (out.task.reason or "")
    with transaction(engine) as s:  # nothing else claimable but the two plain queued tasks
        for t in s.exec(select(Task).where(Task.state == S.QUEUED)).all():
            transition(s, t.id or 0, S.CANCELLED)
    assert claim(engine) is None  # the dependent's merge waits
    merge(engine, one)
    assert claim(engine) == three  # now it merges
    assert state(engine, three) is S.MERGING


def test_a_failing_prerequisite_parks_its_dependents_and_run_anyway_runs_them(
    engine: Engine,
) -> None:
    one, _two, three, four = queued_plan(engine)
    assert claim(engine) == one
    walk(engine, one, S.FAILED)
    claim(engine)  # settles
    for dependent in (three, four):
        with transaction(engine) as s:
            task = get_task(s, dependent)
            assert task.state is S.NEEDS_INPUT
            assert f"prerequisite #{one} failed" in (task.reason or "")
            assert "run it anyway" in (task.reason or "")
    with transaction(engine) as s:
        actions.run_anyway(s, three, actor="U1")
        actions.cancel(s, four, actor="U1")
    assert claim(engine) == three
    assert state(engine, four) is S.CANCELLED


def test_overlapping_paths_of_one_plan_never_run_at_once(engine: Engine) -> None:
    wide, narrow, apart = queued_plan(
        engine,
        draft(
            ("refactor", ["src/**"], []),
            ("endpoint", ["src/api/handler.py"], []),
            ("readme", ["README.md"], []),
        ),
    )
    assert claim(engine) == wide
    assert claim(engine) == apart  # the narrow one waits for the wide one
    assert claim(engine) is None
    assert state(engine, narrow) is S.QUEUED
    walk(engine, wide, S.RUNNING, S.AWAITING_APPROVAL)
    assert claim(engine) == narrow  # free once the other holds no worker


def test_overlap_does_not_hold_a_task_after_its_own_prerequisite(engine: Engine) -> None:
    d = draft(("a", ["src/**"], []), ("b", ["src/x.py"], [1]), ("c", ["src/y.py"], []))
    first, second, third = queued_plan(engine, d)
    with transaction(engine) as s:
        pairs = {(e.task_id, e.other_id) for e in s.exec(select(TaskExclusion)).all()}
    # b needs a: ordered already, so no exclusion; c overlaps a and is kept apart from it
    assert pairs == {(first, third), (third, first)}
    assert second not in {t for pair in pairs for t in pair}
    assert paths_overlap(["src/**"], ["src/x.py"])
    assert not paths_overlap(["src/a.py"], ["src/ab.py"])
    assert paths_overlap(["src/a*"], ["src/ab.py"])


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        (
            [
                {"prompt": "a", "allowed_paths": ["x"], "after": [2]},
                {"prompt": "b", "allowed_paths": ["y"], "after": [1]},
            ],
            "circle: 1 -> 2 -> 1",
        ),
        ([{"prompt": "a", "allowed_paths": ["x"], "after": [1]}], "comes after itself"),
        ([{"prompt": "a", "allowed_paths": ["x"], "after": [7]}], "the plan has tasks 1 to 1"),
        ([{"prompt": "a", "allowed_paths": ["x"]}] * 13, "at most 12"),
        ([{"prompt": "a", "allowed_paths": ["x"], "rm": "-rf /"}], "Extra inputs"),
        ([{"prompt": " ", "allowed_paths": ["x"]}], "at least 1 character"),
        ([{"prompt": "a", "allowed_paths": []}], "at least 1 item"),
        ([], "at least 1 item"),
    ],
)
def test_untrusted_plan_shapes_are_refused_with_a_clear_message(
    tasks: list[dict[str, object]], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        PlanDraft.model_validate({"title": "t", "tasks": tasks})


def test_add_after_refuses_unknown_other_repo_and_closed_and_writes_nothing(
    engine: Engine,
) -> None:
    with transaction(engine) as s:
        other = create_task(s, repo="web", prompt="x", requester="U1")
        gone = create_task(s, repo="app", prompt="y", requester="U1")
        transition(s, gone.id or 0, S.CANCELLED)
    for after, message in [
        ([999], "there is no task 999"),
        ([other.id], "on web, this one on app"),
        ([gone.id], "it will never merge"),
    ]:
        with pytest.raises(actions.ActionError, match=message), transaction(engine) as s:
            actions.add(s, repo="app", prompt="z", requester="U1", after=after)
    with transaction(engine) as s:
        assert s.exec(select(func.count()).select_from(Task)).one() == 2


def test_add_after_waits_and_after_a_merged_task_queues(engine: Engine) -> None:
    with transaction(engine) as s:
        first = actions.add(s, repo="app", prompt="first", requester="U1").task
        second = actions.add(s, repo="app", prompt="then", requester="U1", after=[first.id or 0])
    assert second.task.state is S.WAITING
    assert f"waits for #{first.id} to merge" in second.message
    assert claim(engine) == first.id
    assert claim(engine) is None
    walk(engine, first.id or 0, S.RUNNING, S.AWAITING_APPROVAL)
    merge(engine, first.id or 0)
    assert claim(engine) == second.task.id
    with transaction(engine) as s:
        third = actions.add(s, repo="app", prompt="later", requester="U1", after=[first.id or 0])
    assert third.task.state is S.QUEUED  # its prerequisite is merged already


def test_queue_all_twice_queues_the_plan_once(engine: Engine) -> None:
    queued_plan(engine)
    with transaction(engine) as s:
        plan_id = s.exec(select(Plan.id)).one()
    with pytest.raises(Conflict, match="is queued"), transaction(engine) as s:
        queue_plan(s, plan_id or 0, actor="U2")
    with transaction(engine) as s:
        assert s.exec(select(func.count()).select_from(Task)).one() == 4


KILLED_MID_QUEUE = """
import os, signal, sys
from storage.db import make_engine, transaction
from storage.plans import queue_plan
engine = make_engine(sys.argv[1], create=False)
with transaction(engine) as s:
    queue_plan(s, int(sys.argv[2]), actor="U1")
    s.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # every task written, nothing committed
"""


def test_kill_9_while_queueing_a_plan_queues_none_of_it_and_it_can_be_queued_again(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    with transaction(engine) as s:
        plan = create_plan(s, repo="app", spec="spec", draft=FOUR, requester="U1")
    script = tmp_path / "queue_and_die.py"
    script.write_text(textwrap.dedent(KILLED_MID_QUEUE))
    proc = subprocess.run(
        [sys.executable, str(script), db_url, str(plan.id)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with transaction(engine) as s:
        assert s.exec(select(func.count()).select_from(Task)).one() == 0
        assert get_plan(s, plan.id or 0).status == "proposed"
        tasks = queue_plan(s, plan.id or 0, actor="U1")
    assert len(tasks) == 4
    assert {claim(engine), claim(engine), claim(engine)} == {tasks[0].id, tasks[1].id, None}


def test_two_processes_never_start_two_overlapping_tasks_of_one_plan(
    engine: Engine, db_url: str
) -> None:
    from tests.test_queue import _run_claimers

    plans = [
        queued_plan(engine, draft(("a", ["src/**"], []), ("b", ["src/x.py"], [])))
        for _ in range(30)
    ]
    results = _run_claimers(db_url, ["alpha", "beta"])
    claimed = set(results["alpha"] + results["beta"])
    for pair in plans:  # each plan: one of its two started, the other waits for it
        assert len(claimed & set(pair)) == 1, (pair, results)


def test_the_digest_groups_a_plans_tasks_under_the_plan(engine: Engine) -> None:
    import json
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from bot.slack.digest import render
    from storage.digests import collect
    from storage.models import utcnow

    with transaction(engine) as s:
        create_task(s, repo="app", prompt="alone before", requester="U1")
    one, *_ = queued_plan(engine)
    with transaction(engine) as s:
        create_task(s, repo="app", prompt="alone after", requester="U1")
        data = collect(s, utcnow() - timedelta(hours=1), utcnow())
    _, blocks = render(data, tz=ZoneInfo("UTC"))
    text = json.dumps(blocks, ensure_ascii=False)
    assert text.index("alone after") < text.index(f"*{one}* `app` _queued_ _plan 1_")
    assert "_waiting_ _plan 1_ · api on the model" in text
