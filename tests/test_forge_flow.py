"""The `pull_request` policy end to end, against the GitHub and the GitLab emulators and a
local bare remote, with real workers, Docker and git: a parked task has a draft PR carrying
its proof pack; Approve merges it through the forge's API; the forge's refusals, a person's
close or merge on the forge, and a reject here all come back to the task."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import Engine

from bot import actions
from bot.slack.blocks import card
from executor.config.schema import Config, RepoConfig
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Task
from tests.conftest import git
from tests.forge_emulator.fixtures import ForgeSetup
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.worker_fixtures import RunWorker, add_task, task

CHECKS = {"checks": ["python3 -m unittest"]}


def fix():
    return reply(
        tool_call("edit_file", {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"})
    )


def finish(summary: str = "fixed add()"):
    return reply(tool_call("finish", {"summary": summary}))


def run(make_worker: RunWorker, forge: ForgeSetup, script: list, **merge: object) -> None:
    with ScriptedLLM(script) as llm:
        make_worker(llm, repo_options=forge.options(**merge) | CHECKS).work(drain=True)


def card_text(t: Task) -> str:
    return "\n".join(b["text"]["text"] for b in card(t)[1] if b.get("type") == "section")


def approve(engine: Engine, task_id: int) -> None:
    with transaction(engine) as s:
        actions.approve(s, task_id, actor="U1")


def park(engine: Engine, make_worker: RunWorker, forge: ForgeSetup, **merge: object) -> int:
    task_id = add_task(engine)
    run(make_worker, forge, [fix(), finish()], **merge)
    parked = task(engine, task_id)
    assert parked.state is State.AWAITING_APPROVAL, parked.reason
    return task_id


def test_parked_task_has_a_draft_pr_with_its_proof_pack_and_approve_merges_it(
    engine: Engine, make_worker: RunWorker, forge: ForgeSetup
) -> None:
    task_id = park(engine, make_worker, forge)
    parked = task(engine, task_id)
    raw = forge.pr(1)
    assert (parked.pr_number, parked.pr_state) == (1, "open")
    assert parked.pr_url and parked.pr_url == raw.get("html_url", raw.get("web_url"))
    assert raw["draft"] is True
    head = raw["head"]["sha"] if forge.kind == "github" else raw["sha"]
    assert head == parked.head_commit  # exactly the proven commit went up
    body = forge.body()
    for expected in ("fixed add()", "python3 -m unittest", parked.head_commit[:12], "## Risk"):
        assert expected in body
    assert "https://slack.com/archives/C1" in body and "## Cost" in body
    assert parked.pr_url in card_text(parked)  # the card links the PR
    base_before = git(forge.remote, "rev-parse", "main")

    approve(engine, task_id)
    run(make_worker, forge, [])
    merged = task(engine, task_id)
    assert merged.state is State.MERGED, merged.reason
    assert forge.merged(1) and forge.pr(1)["draft"] is False
    tip = git(forge.remote, "rev-parse", "main")
    assert tip != base_before and merged.merge_commit == tip  # the forge's answer, recorded
    assert git(forge.remote, "show", "main:calc.py").endswith("a + b")
    assert merged.pr_state == "merged"


def test_a_required_check_pending_leaves_the_task_awaiting_approval_with_the_reason(
    engine: Engine, make_worker: RunWorker, forge: ForgeSetup
) -> None:
    task_id = park(engine, make_worker, forge)
    base_before = git(forge.remote, "rev-parse", "main")
    forge.block_merges(True)
    approve(engine, task_id)
    run(make_worker, forge, [])
    waiting = task(engine, task_id)
    assert waiting.state is State.AWAITING_APPROVAL
    why = (
        'Required status check "ci" is expected'
        if forge.kind == "github"
        else "the pipeline is still running"
    )
    assert why in (waiting.reason or ""), waiting.reason
    assert git(forge.remote, "rev-parse", "main") == base_before and not forge.merged(1)
    assert why in card_text(waiting)  # the card says exactly why

    forge.block_merges(False)  # the check reported: a later Approve merges
    approve(engine, task_id)
    run(make_worker, forge, [])
    assert task(engine, task_id).state is State.MERGED
    assert forge.merged(1)


def test_a_pr_closed_on_the_forge_rejects_the_task(
    engine: Engine, make_worker: RunWorker, forge: ForgeSetup
) -> None:
    task_id = park(engine, make_worker, forge)
    forge.emulator.close_by_person(1)
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=forge.options() | CHECKS).maintain()
    closed = task(engine, task_id)
    assert closed.state is State.REJECTED
    assert "was closed on" in (closed.reason or "") and closed.pr_state == "closed"


def test_reject_here_closes_the_pr_and_polls_are_conditional(
    engine: Engine, make_worker: RunWorker, forge: ForgeSetup
) -> None:
    task_id = park(engine, make_worker, forge)
    with ScriptedLLM([]) as llm:
        worker = make_worker(llm, repo_options=forge.options() | CHECKS)
        worker.maintain()
        worker._next_maintenance = 0
        worker.maintain()  # nothing changed: the forge answers 304
        polls = [r for r in forge.emulator.requests if r.method == "GET" and r.path.endswith("/1")]
        assert polls[-1].status == 304 and "If-None-Match" in polls[-1].headers
        with transaction(engine) as s:
            actions.reject(s, task_id, actor="U1")
        worker._next_maintenance = 0
        worker.maintain()
    assert forge.pr(1)["state"] == "closed" and not forge.merged(1)
    assert task(engine, task_id).pr_state == "closed"


def test_a_task_from_an_issue_url_has_its_text_as_prompt_and_its_pr_references_it(
    engine: Engine, make_worker: RunWorker, forge: ForgeSetup, project: Path
) -> None:
    url = forge.emulator.add_issue(12, "add() subtracts", "calc.add(2, 3) gives -1; want 5")
    config = Config.model_validate(
        {"repos": {"app": RepoConfig(path=project, **forge.options()), "other": {"path": project}}}
    )
    for typed in (url, f"<{url}>"):  # as typed, and as Slack may wrap it
        assert actions.from_issue(config, typed, None) == ("app", url)
    with transaction(engine) as s:
        task_id = actions.add(s, repo="app", prompt=url, requester="U1", issue_url=url).task.id
    with ScriptedLLM([fix(), finish()]) as llm:
        make_worker(llm, repo_options=forge.options() | CHECKS).work(drain=True)
        first = json.dumps(llm.requests[0]["messages"])
    parked = task(engine, task_id)
    assert parked.state is State.AWAITING_APPROVAL, parked.reason
    assert parked.prompt.startswith("add() subtracts\n\ncalc.add(2, 3) gives -1; want 5")
    assert "calc.add(2, 3) gives -1" in first  # the agent was given the issue's text
    word = "Fixes" if forge.kind == "github" else "Closes"
    assert parked.pr_number is not None and f"{word} #12" in forge.body(parked.pr_number)


def test_a_pr_merged_on_the_forge_by_a_person_merges_the_task(
    engine: Engine, make_worker: RunWorker, forge: ForgeSetup
) -> None:
    task_id = park(engine, make_worker, forge)
    sha = forge.emulator.merge_by_person(1)
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=forge.options() | CHECKS).maintain()
    merged = task(engine, task_id)
    assert merged.state is State.MERGED and merged.merge_commit == sha
    assert f"was merged on {forge.kind}" in (merged.reason or "")


def test_a_revision_updates_the_same_pr(
    engine: Engine, make_worker: RunWorker, forge: ForgeSetup
) -> None:
    task_id = park(engine, make_worker, forge)
    first = task(engine, task_id).head_commit
    with transaction(engine) as s:
        actions.nudge(s, task_id, "also add a docstring", actor="U1")
    doc = reply(
        tool_call(
            "edit_file",
            {
                "path": "calc.py",
                "old_text": "def add(a, b):\n",
                "new_text": 'def add(a, b):\n    """Sum."""\n',
            },
        )
    )
    run(make_worker, forge, [doc, finish("added a docstring")])
    revised = task(engine, task_id)
    assert revised.state is State.AWAITING_APPROVAL and revised.head_commit != first
    assert revised.pr_number == 1 and len(forge.emulator.requests) > 0
    raw = forge.pr(1)
    head = raw["head"]["sha"] if forge.kind == "github" else raw["sha"]
    assert head == revised.head_commit and revised.head_commit[:12] in forge.body(1)
    assert "added a docstring" in forge.body(1)
    opened = forge.emulator.count("POST", r"/(pulls|merge_requests)$")
    assert opened == 1  # updated, not opened again


def test_a_forge_down_at_park_time_loses_nothing(
    engine: Engine, make_worker: RunWorker, forge: ForgeSetup
) -> None:
    forge.emulator.server_errors(1000)  # every answer a 502 while the task parks
    task_id = park(engine, make_worker, forge)
    parked = task(engine, task_id)
    assert "pull request not updated" in (parked.reason or "") and parked.pr_number is None
    forge.emulator.heal()  # back up: Approve opens the PR and merges it
    approve(engine, task_id)
    run(make_worker, forge, [])
    merged = task(engine, task_id)
    assert merged.state is State.MERGED, merged.reason
    assert merged.pr_number is not None and forge.merged(merged.pr_number)
