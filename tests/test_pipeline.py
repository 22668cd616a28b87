"""The pipeline the system enforces, and merging: real Docker, real git, a scripted model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from bot import actions
from executor.git import merge
from executor.pipeline import stages
from storage.db import transaction
from storage.lifecycle import State
from storage.tasks import events, get_task
from tests.conftest import git
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.worker_fixtures import RunWorker, add_task, task

CHECK = "python3 -m unittest -q 2>&1"
CONTINUE = "git add calc.py && GIT_EDITOR=true git rebase --continue 2>&1"


def finish(summary: str = "done"):
    return reply(tool_call("finish", {"summary": summary}))


def verdict(kind: str, *findings: tuple[str, int, str], summary: str = ""):
    found = [{"file": f, "line": n, "message": m} for f, n, m in findings]
    args = {"verdict": kind, "summary": summary, "findings": found}
    return reply(tool_call("submit_review", args))


def edit(old: str, new: str, path: str = "calc.py"):
    return reply(tool_call("edit_file", {"path": path, "old_text": old, "new_text": new}))


def approve(engine: Engine, task_id: int) -> None:
    with transaction(engine) as s:
        actions.approve(s, task_id, actor="U1")


def states(engine: Engine, task_id: int) -> list[str]:
    with transaction(engine) as s:
        return [e.payload["to"] for e in events(s, task_id) if e.kind == "state"]


# --- pure ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "allowed", "outside"),
    [
        (["src/a.py", "src/x/b.py"], ["src/**"], []),
        (["src/a.py", "setup.py"], ["src/**"], ["setup.py"]),
        (["a.py", "docs/x.md"], ["*.py"], ["docs/x.md"]),
        (
            ["tests/test_a.py", "tests/deep/test_b.py"],
            ["tests/test_*.py"],
            ["tests/deep/test_b.py"],
        ),
        (["x/y/z.txt"], ["**/*.txt"], []),
        (["anything"], ["**"], []),
    ],
)
def test_out_of_scope(files: list[str], allowed: list[str], outside: list[str]) -> None:
    assert stages.out_of_scope(files, allowed) == outside


def test_risk_rises_with_size_sensitivity_missing_proof_and_doubts() -> None:
    ok = stages.CheckResult("pytest", 0, 1.0, "")
    bad = stages.CheckResult("pytest", 1, 1.0, "")
    approve_ = stages.Verdict(verdict="approve")
    small = {"files": ["src/a.py"], "lines_changed": 10}
    assert stages.assess_risk(**small, checks=[ok], verdict=approve_).level == "low"
    risky = stages.assess_risk(
        files=[".github/workflows/ci.yml"], lines_changed=500, checks=[bad], verdict=None
    )
    assert risky.level == "high"
    assert risky.reasons == [
        "500 lines changed",
        "touches .github/workflows/ci.yml",
        "checks failing",
        "not reviewed",
    ]
    doubts = stages.Verdict(verdict="changes_requested")
    assert stages.assess_risk(**small, checks=[], verdict=doubts).level == "high"


# --- the pipeline ---------------------------------------------------------------------------


def test_checks_send_it_back_review_requests_a_change_then_it_parks_with_proof(
    engine: Engine, make_worker: RunWorker, project: Path, db_url: str, tmp_path: Path
) -> None:
    task_id = add_task(engine)
    script = [
        finish("first try"),  # the bug is still there: the checks fail
        edit("a - b", "a + b"),
        finish("fixed add()"),
        verdict("changes_requested", ("calc.py", 1, "add a docstring to add()")),
        edit("def add(a, b):\n", 'def add(a, b):\n    """Return a + b."""\n'),
        finish("fixed add(), with a docstring"),
        verdict("approve", summary="correct and tested"),
    ]
    options = {"checks": [CHECK], "review": {"enabled": True, "max_rounds": 2}}
    with ScriptedLLM(script) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    assert llm.remaining == 0
    parked = task(engine, task_id)
    assert parked.state is State.AWAITING_APPROVAL, parked.reason
    assert states(engine, task_id) == [
        "preparing",
        "running",
        "checking",
        "revising",
        "checking",
        "reviewing",
        "revising",
        "checking",
        "reviewing",
        "awaiting_approval",
    ]
    # What the agent was told each time it was sent back.
    after_checks = llm.requests[1]["messages"][-1]["content"]
    assert (
        "checks ran on your work and 1 failed" in after_checks and "AssertionError" in after_checks
    )
    after_review = llm.requests[4]["messages"][-1]["content"]
    assert "1. calc.py:1: add a docstring to add()" in after_review
    # The review saw the diff and the checks.
    review_request = llm.requests[6]["messages"][1]["content"]
    assert "+    return a + b" in review_request and "passed" in review_request
    # The proof pack, as `nightcrew show` prints it.
    env = {**os.environ, "NIGHTCREW_DATABASE_URL": db_url, "COLUMNS": "200"}
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("nightcrew")), "show", str(task_id)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for expected in (
        "proof",
        "risk: low",
        "diff: 1 file(s), +2 -1",
        f"✓ {CHECK}",
        "review: approve: correct and tested",
        "revision rounds: 2",
        "working time",
    ):
        assert expected in shown, shown

    approve(engine, task_id)
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    merged = task(engine, task_id)
    assert merged.state is State.MERGED, merged.reason
    assert '"""Return a + b."""' in git(project, "show", "main:calc.py")
    message = git(project, "log", "-1", "--format=%B", "main")
    assert "Nightcrew-Task: 1" in message and "Approved-by: U1" in message
    assert git(project, "rev-parse", "main") == merged.merge_commit
    assert git(project, "branch", "--list", "nightcrew/*") == ""  # branch deleted


def test_three_overlapping_tasks_merge_one_after_another(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    endings = ["one", "two", "three"]
    ids = [add_task(engine, f"mark add() with {word}") for word in endings]
    script = []
    for word in endings:
        script += [edit("return a - b", f"return a + b  # {word}"), finish(word)]
    options = {"checks": [CHECK]}
    with ScriptedLLM(script) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    assert [task(engine, i).state for i in ids] == [State.AWAITING_APPROVAL] * 3

    merged_so_far = "one"
    for task_id, word in zip(ids, endings, strict=True):
        approve(engine, task_id)
        if word == "one":
            resolve = []  # the first one merges cleanly
        else:
            merged_so_far += f", {word}"
            content = f"def add(a, b):\n    return a + b  # {merged_so_far}\n"
            resolve = [
                reply(tool_call("write_file", {"path": "calc.py", "content": content})),
                reply(
                    tool_call(
                        "bash",
                        {"command": CONTINUE},
                    )
                ),
                finish("resolved"),
            ]
        with ScriptedLLM(resolve) as llm:
            make_worker(llm, repo_options=options).work(drain=True)
        if resolve:  # a resolved conflict changed the tree: it waits for a new approval
            assert task(engine, task_id).state is State.AWAITING_APPROVAL
            approve(engine, task_id)
            with ScriptedLLM([]) as again:
                make_worker(again, repo_options=options).work(drain=True)
        done = task(engine, task_id)
        assert done.state is State.MERGED, done.reason
        if resolve:  # the agent saw the conflict, and the checks ran again after the rebase
            assert "rebase stopped on conflicts" in llm.requests[0]["messages"][2]["content"]
            with transaction(engine) as s:
                kinds = [(e.kind, e.payload.get("after")) for e in events(s, task_id)]
            assert ("checks", "rebase") in kinds
    assert git(project, "show", "main:calc.py").endswith("return a + b  # one, two, three")
    log = git(project, "log", "--first-parent", "--format=%s", "main")  # the merges only
    assert (
        sum("Nightcrew" in line or line.startswith("mark add()") for line in log.splitlines()) == 3
    )


def test_changes_outside_allowed_paths_never_reach_the_base(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    base_before = git(project, "rev-parse", "main")
    task_id = add_task(engine)
    script = [
        edit("a - b", "a + b"),
        reply(tool_call("write_file", {"path": "deploy/secret.txt", "content": "x\n"})),
        *[finish("done") for _ in range(4)],  # it never undoes the stray file
    ]
    options = {"allowed_paths": ["calc.py", "test_*.py"]}
    with ScriptedLLM(script) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    stuck = task(engine, task_id)
    assert stuck.state is State.NEEDS_INPUT
    assert stuck.reason == "changed files outside allowed_paths: deploy/secret.txt (after 3 rounds)"
    assert "outside the paths this repository allows" in llm.requests[3]["messages"][-1]["content"]
    with pytest.raises(actions.ActionError), transaction(engine) as s:
        actions.approve(s, task_id, actor="U1")
    assert git(project, "rev-parse", "main") == base_before


def test_the_merge_itself_refuses_out_of_scope_changes(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    base_before = git(project, "rev-parse", "main")
    task_id = add_task(engine)
    script = [reply(tool_call("write_file", {"path": "ci.yml", "content": "x\n"})), finish()]
    with ScriptedLLM(script) as llm:
        make_worker(llm).work(drain=True)  # allowed everywhere when it ran
    approve(engine, task_id)
    with ScriptedLLM([]) as llm:  # the repo's rules were tightened before the merge
        make_worker(llm, repo_options={"allowed_paths": ["src/**"]}).work(drain=True)
    refused = task(engine, task_id)
    assert refused.state is State.AWAITING_APPROVAL  # parked back: a person decides
    assert refused.reason == "not merged: changes outside allowed_paths: ci.yml"
    assert git(project, "rev-parse", "main") == base_before
    approve(engine, task_id)  # the rules are loosened again: approving again retries
    with ScriptedLLM([]) as llm:
        make_worker(llm).work(drain=True)
    assert task(engine, task_id).state is State.MERGED


def test_local_edits_in_the_checked_out_base_park_the_merge_without_a_crash(
    engine: Engine, make_worker: RunWorker, project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    task_id = add_task(engine)
    with ScriptedLLM([edit("a - b", "a + b"), finish()]) as llm:
        make_worker(llm).work(drain=True)
    mine = (project / "calc.py").read_text() + "# my own edit, not committed\n"
    (project / "calc.py").write_text(mine)
    approve(engine, task_id)
    with ScriptedLLM([]) as llm:
        make_worker(llm).work(drain=True)
    parked = task(engine, task_id)
    assert parked.state is State.AWAITING_APPROVAL
    assert parked.reason and "commit or stash your local changes" in parked.reason
    assert "GitError" not in parked.reason and "LocalChanges" not in parked.reason
    assert not [r for r in caplog.records if r.exc_info], "a person's edits logged as a crash"
    assert (project / "calc.py").read_text() == mine  # their edit untouched
    git(project, "checkout", "--", "calc.py")  # they put it aside and approve again
    approve(engine, task_id)
    with ScriptedLLM([]) as llm:
        make_worker(llm).work(drain=True)
    assert task(engine, task_id).state is State.MERGED
    assert "a + b" in (project / "calc.py").read_text()


def bash(command: str):
    return reply(tool_call("bash", {"command": command}))


def test_a_rename_out_of_a_forbidden_path_is_caught(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    (project / "deploy").mkdir()
    (project / "deploy" / "key.txt").write_text("secret\n")
    git(project, "add", ".")
    git(project, "commit", "-qm", "deploy key")
    task_id = add_task(engine)
    move = "mkdir -p src && git mv deploy/key.txt src/key.txt && git commit -qm move"
    with ScriptedLLM([bash(move), *[finish() for _ in range(4)]]) as llm:
        make_worker(llm, repo_options={"allowed_paths": ["src/**"]}).work(drain=True)
    stuck = task(engine, task_id)
    assert stuck.state is State.NEEDS_INPUT
    assert stuck.reason is not None and "deploy/key.txt" in stuck.reason


def test_a_file_added_and_removed_on_the_branch_never_reaches_the_base(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    base_before = git(project, "rev-parse", "main")
    task_id = add_task(engine)
    script = [
        bash("echo token > leak.txt && git add leak.txt && git commit -qm add"),
        bash("git rm -q leak.txt && git commit -qm remove"),
        edit("a - b", "a + b"),
        finish(),
    ]
    options = {"allowed_paths": ["calc.py"]}
    with ScriptedLLM(script) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    assert task(engine, task_id).state is State.AWAITING_APPROVAL  # the net diff is in scope
    approve(engine, task_id)
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    refused = task(engine, task_id)
    assert refused.reason == "not merged: changes outside allowed_paths: leak.txt"
    assert git(project, "rev-parse", "main") == base_before


def test_an_agents_own_trailer_does_not_count_as_a_merge(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    ff = {"merge": {"policy": "ff"}}
    first = add_task(engine, "first")
    # Task 1's agent writes a commit that claims to be task 2's merge; ff puts it on main.
    fake = "git commit -qam 'fix' -m 'Nightcrew-Task: 2'"
    with ScriptedLLM([edit("a - b", "a + b"), bash(fake), finish()]) as llm:
        make_worker(llm, repo_options=ff).work(drain=True)
    approve(engine, first)
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=ff).work(drain=True)
    assert task(engine, first).state is State.MERGED
    assert "Nightcrew-Task: 2" in git(project, "log", "--format=%B", "main")
    second = add_task(engine, "second")
    assert second == 2
    x = "echo x > x.txt && git add x.txt && git commit -qm x"
    with ScriptedLLM([bash(x), finish()]) as llm:
        make_worker(llm, repo_options=ff).work(drain=True)
    before = git(project, "rev-parse", "main")
    approve(engine, second)
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=ff).work(drain=True)
    merged = task(engine, second)
    assert merged.state is State.MERGED
    assert merged.merge_commit != before and git(project, "show", "main:x.txt") == "x"


@pytest.mark.parametrize(("policy", "parents"), [("merge", 2), ("squash", 1), ("ff", 1)])
def test_merge_policies(
    engine: Engine, make_worker: RunWorker, project: Path, policy: str, parents: int
) -> None:
    base_before = git(project, "rev-parse", "main")
    task_id = add_task(engine)
    with ScriptedLLM([edit("a - b", "a + b"), finish()]) as llm:
        make_worker(llm).work(drain=True)
    approve(engine, task_id)
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options={"merge": {"policy": policy}}).work(drain=True)
    merged = task(engine, task_id)
    assert merged.state is State.MERGED, merged.reason
    tip = git(project, "rev-parse", "main")
    assert len(git(project, "rev-list", "--parents", "-n1", tip).split()) - 1 == parents
    assert git(project, "rev-parse", "main^") == base_before or policy == "ff"
    if policy == "ff":
        assert tip == merged.head_commit
    else:
        assert "Nightcrew-Task: 1" in git(project, "log", "-1", "--format=%B", tip)
    assert git(project, "show", "main:calc.py").endswith("a + b")


def test_a_merge_that_died_after_moving_the_base_is_not_done_twice(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    task_id = add_task(engine)
    with ScriptedLLM([edit("a - b", "a + b"), finish()]) as llm:
        make_worker(llm).work(drain=True)
    approve(engine, task_id)
    # What a worker killed right after moving the base left behind: the merge commit on main,
    # recorded in the database as the commit it was about to land, the task still merging.
    parked = task(engine, task_id)
    base_tip = git(project, "rev-parse", "main")
    text = merge.message(task_id=task_id, prompt=parked.prompt, summary=None, approved_by="U1")
    new = merge.make_commit(
        project, base_tip=base_tip, head=parked.head_commit or "", policy="merge", text=text
    )
    with transaction(engine) as s:
        get_task(s, task_id).landing_commit = new
    merge.advance_base(project, base="main", new=new, old=base_tip)
    with ScriptedLLM([]) as llm:
        make_worker(llm).work(drain=True)
    merged = task(engine, task_id)
    assert (merged.state, merged.merge_commit) == (State.MERGED, new)
    assert git(project, "rev-parse", "main") == new  # no second merge commit


def test_a_hostile_workspace_gets_nothing_run_or_read_on_the_host(
    engine: Engine, make_worker: RunWorker, project: Path, tmp_path: Path
) -> None:
    """Hooks, git config, filters and symlinks planted by the agent, through a revision
    round and the merge: nothing they name runs on the host, no host file is read."""
    secret = tmp_path / "host-secret.txt"
    secret.write_text("TOPSECRET-42\n")
    marker = tmp_path / "pwned"  # exists only on the host: creating it needs host execution
    touch = f"touch {marker}"
    plant = "\n".join(
        [
            # Committed content: links to a host secret, attributes naming a hostile filter.
            f"ln -s {secret} leak",
            f"rm AGENTS.md && ln -s {secret} AGENTS.md",
            "echo '* filter=evil diff=evil' > .gitattributes",
            "git add -A && git commit -qm 'planted' && echo committed",
            # Then the clone's own hooks and config, as the host-side steps will find them.
            *[
                f"printf '#!/bin/sh\\n{touch}-{hook}\\n' > .git/hooks/{hook} && "
                f"chmod +x .git/hooks/{hook}"
                for hook in (
                    "post-checkout",
                    "post-commit",
                    "post-merge",
                    "pre-push",
                    "reference-transaction",
                    "post-rewrite",
                    "pre-auto-gc",
                )
            ],
            f"git config core.fsmonitor '{touch}-fsmonitor'",
            f"git config filter.evil.clean '{touch}-clean'",
            f"git config filter.evil.smudge '{touch}-smudge'",
            f"git config diff.external '{touch}-diff'",
            f"git config core.sshCommand '{touch}-ssh'",
            f"git config include.path {secret}",
        ]
    )
    task_id = add_task(engine)
    with ScriptedLLM([reply(tool_call("bash", {"command": plant})), finish()]) as llm:
        make_worker(llm).work(drain=True)
    assert task(engine, task_id).state is State.AWAITING_APPROVAL
    assert "committed" in llm.requests[1]["messages"][-1]["content"]
    with transaction(engine) as s:  # a revision round: a new attempt reads AGENTS.md again
        actions.nudge(s, task_id, "one more look", actor="U1")
    with ScriptedLLM([finish()]) as second:
        make_worker(second).work(drain=True)
    approve(engine, task_id)
    with ScriptedLLM([]) as third:
        make_worker(third).work(drain=True)
    assert task(engine, task_id).state is State.MERGED
    assert list(tmp_path.glob("pwned*")) == []  # nothing the agent named ran on the host
    for request in llm.requests + second.requests:
        assert "TOPSECRET" not in str(request)  # no host file reached the model
    assert "nightcrew" in second.requests[0]["messages"][0]["content"]  # the prompt was built
    assert (project / "leak").is_symlink()  # merged as a link, never followed
    assert git(project, "cat-file", "-p", "main:leak") == str(secret)


@pytest.mark.parametrize("kind", ["url", "path-with-origin"])
def test_the_merge_is_pushed_to_the_remote(
    engine: Engine, make_worker: RunWorker, project: Path, tmp_path: Path, kind: str
) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(project), str(remote))
    if kind == "url":
        options: dict = {"path": None, "url": f"file://{remote}"}
    else:
        git(project, "remote", "add", "origin", str(remote))
        options = {}
    task_id = add_task(engine)
    with ScriptedLLM([edit("a - b", "a + b"), finish()]) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    approve(engine, task_id)
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    merged = task(engine, task_id)
    assert merged.state is State.MERGED, merged.reason
    assert git(remote, "rev-parse", "main") == merged.merge_commit
    assert git(remote, "show", "main:calc.py").endswith("a + b")


def test_what_the_checks_leave_behind_does_not_join_the_branch(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    task_id = add_task(engine)
    options = {"checks": [f"{CHECK} && echo cached > .check-cache"]}
    with ScriptedLLM([edit("a - b", "a + b"), finish()]) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    parked = task(engine, task_id)
    assert parked.state is State.AWAITING_APPROVAL, parked.reason
    files = git(project, "ls-tree", "-r", "--name-only", parked.branch or "")
    assert ".check-cache" not in files.split()  # the branch is what was checked


def test_review_garbage_and_exhausted_rounds_park_for_a_person_with_findings(
    engine: Engine, make_worker: RunWorker
) -> None:
    garbage_id = add_task(engine, "garbage review")
    garbage = reply(tool_call("submit_review", {"verdict": "lgtm!!"}))
    script = [edit("a - b", "a + b"), finish(), garbage, reply(content="I approve")]
    options = {"review": {"enabled": True, "max_rounds": 1}}
    with ScriptedLLM(script) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    parked = task(engine, garbage_id)
    assert parked.state is State.AWAITING_APPROVAL
    assert parked.reason == "risk high; review: needs discussion (open findings)"
    with transaction(engine) as s:
        proof = [e.payload for e in events(s, garbage_id) if e.kind == "proof"][-1]
    assert "unusable verdict" in proof["review"]["findings"][0]["message"]
    assert "That verdict was unusable" in llm.requests[3]["messages"][-1]["content"]

    rounds_id = add_task(engine, "picky review")
    picky = verdict("changes_requested", ("calc.py", 2, "rename b to other"))
    script = [finish(), picky, finish(), picky]  # one revision round, then a person decides
    with ScriptedLLM(script) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    picked = task(engine, rounds_id)
    assert picked.state is State.AWAITING_APPROVAL
    assert picked.reason == "risk high; review: changes requested (open findings)"
