"""A worker runs real tasks: real Docker sandbox, real git, a scripted model over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine

from bot import actions
from storage.db import transaction
from storage.lifecycle import State
from storage.tasks import events
from tests.conftest import git
from tests.docker_fixtures import running_in
from tests.llm_server import (
    Fault,
    ScriptedLLM,
    drop,
    error,
    hang,
    rate_limited,
    reply,
    slow,
    tool_call,
)
from tests.worker_fixtures import (
    HOLD,
    RunWorker,
    add_task,
    containers_of,
    release,
    task,
    wait_for,
)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_task_reads_edits_tests_and_finishes_on_its_branch(
    stream: bool,
    engine: Engine,
    make_worker: RunWorker,
    project: Path,
    docker_client: docker.DockerClient,
    test_executor: str,
) -> None:
    task_id = add_task(engine)
    script = [
        reply(tool_call("read_file", {"path": "calc.py"}), usage=(100, 10)),
        reply(
            tool_call("edit_file", {"path": "calc.py", "old_text": "a - b", "new_text": "a + b"}),
            usage=(200, 20),
        ),
        reply(tool_call("bash", {"command": "python3 -m unittest -q 2>&1"}), usage=(300, 30)),
        reply(tool_call("finish", {"summary": "add() now adds; unittest passes"}), usage=(400, 40)),
    ]
    with ScriptedLLM(script) as llm:
        assert make_worker(llm, stream=stream).work(drain=True) == 1
    done = task(engine, task_id)
    assert llm.remaining == 0, done.reason

    assert done.state is State.AWAITING_APPROVAL, done.reason
    assert done.summary and done.summary.startswith("add() now adds; unittest passes")
    assert "calc.py | 2 +-" in done.summary  # the diff stat
    assert (done.turns, done.tokens_in, done.tokens_out) == (4, 1000, 100)
    # The branch in the user's repo has the fix, on top of the base.
    assert git(project, "show", f"{done.branch}:calc.py") == "def add(a, b):\n    return a + b"
    assert git(project, "rev-parse", done.branch) == done.head_commit
    assert git(project, "rev-parse", "main") == done.base_commit
    assert git(project, "show", "main:calc.py").endswith("a - b")  # base untouched
    # What the model saw: the repo's AGENTS.md, the file, the test run.
    assert "python3 -m unittest" in llm.requests[0]["messages"][0]["content"]
    tool_results = [m["content"] for m in llm.requests[3]["messages"] if m["role"] == "tool"]
    assert "return a - b" in tool_results[0]
    assert tool_results[1] == "edited calc.py"
    assert tool_results[2].startswith("exit code 0") and "OK" in tool_results[2]
    # Every turn is in the log; the container is gone.
    with transaction(engine) as s:
        turns = [e.payload for e in events(s, task_id) if e.kind == "turn"]
    assert [t["calls"][0]["tool"] for t in turns] == ["read_file", "edit_file", "bash", "finish"]
    assert containers_of(docker_client, test_executor) == []


def test_a_nudge_sent_mid_task_reaches_the_model_at_its_next_turn(
    engine: Engine, make_worker: RunWorker, docker_client: docker.DockerClient, test_executor: str
) -> None:
    task_id = add_task(engine)
    script = [
        reply(tool_call("bash", {"command": HOLD})),
        reply(tool_call("finish", {"summary": "done"})),
    ]
    with ScriptedLLM(script) as llm:
        worker = make_worker(llm)
        thread = threading.Thread(target=worker.work, kwargs={"drain": True})
        thread.start()
        wait_for(lambda: len(llm.requests) == 1)
        with transaction(engine) as s:
            actions.nudge(s, task_id, "use the operator module", actor="U2")
        release(docker_client, test_executor)
        thread.join(60)
    last_user = [m["content"] for m in llm.requests[1]["messages"] if m["role"] == "user"][-1]
    assert "Message from U2" in last_user and "use the operator module" in last_user
    assert task(engine, task_id).state is State.AWAITING_APPROVAL


def test_cancel_during_a_long_command_stops_it_within_seconds(
    engine: Engine, make_worker: RunWorker, docker_client: docker.DockerClient, test_executor: str
) -> None:
    task_id = add_task(engine)
    with ScriptedLLM([reply(tool_call("bash", {"command": "sleep 600"}))]) as llm:
        worker = make_worker(llm)
        thread = threading.Thread(target=worker.work, kwargs={"drain": True})
        thread.start()
        wait_for(
            lambda: running_in(containers_of(docker_client, test_executor), "sleep 600"),
            message="the agent's command to run",
        )
        with transaction(engine) as s:
            actions.cancel(s, task_id, actor="U1")
        cancelled_at = time.monotonic()
        thread.join(60)
        took = time.monotonic() - cancelled_at
    cancelled = task(engine, task_id)
    assert cancelled.state is State.CANCELLED
    assert cancelled.reason == "cancelled by U1"
    assert took < 15, f"cancel took {took:.1f} s"
    assert containers_of(docker_client, test_executor) == []


def test_a_question_parks_the_task_and_a_reply_resumes_it(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    task_id = add_task(engine)
    script = [
        reply(tool_call("write_file", {"path": "notes.txt", "content": "first pass\n"})),
        reply(tool_call("ask_human", {"question": "keep the old API?"})),
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm).work(drain=True)
    parked = task(engine, task_id)
    assert parked.state is State.NEEDS_INPUT
    assert parked.reason == "the agent asks: keep the old API?"
    assert git(project, "show", f"{parked.branch}:notes.txt") == "first pass"  # work kept

    with transaction(engine) as s:
        actions.nudge(s, task_id, "yes, keep it", actor="U1")
    script = [reply(tool_call("finish", {"summary": "kept the old API"}))]
    with ScriptedLLM(script) as llm:
        make_worker(llm).work(drain=True)
    resumed = task(engine, task_id)
    assert resumed.state is State.AWAITING_APPROVAL
    contents = [m["content"] for m in llm.requests[0]["messages"] if m["role"] == "user"]
    assert any("You worked on this task before" in c for c in contents)
    assert any("yes, keep it" in c for c in contents)
    assert git(project, "show", f"{resumed.branch}:notes.txt") == "first pass"


def test_the_same_call_three_times_is_a_loop_warned_once_then_stopped(
    engine: Engine, make_worker: RunWorker
) -> None:
    task_id = add_task(engine)
    same = [reply(tool_call("bash", {"command": "ls"})) for _ in range(4)]
    with ScriptedLLM(same) as llm:
        make_worker(llm).work(drain=True)
    stopped = task(engine, task_id)
    assert stopped.state is State.NEEDS_INPUT
    assert stopped.reason is not None and "stopped a loop" in stopped.reason
    warning = llm.requests[3]["messages"][-1]
    assert warning["role"] == "user" and "same call 3 times" in warning["content"]


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"max_turns": 2}, "turn limit reached (2 turns)"),
        ({"max_tokens": 100}, "token limit reached (150 of 100)"),
        # gpt-4.1 costs $2 / $8 per million tokens: 2 turns of 50k + 25k tokens = $0.60.
        ({"model": "gpt-4.1", "max_cost_usd": 0.5}, "cost limit reached ($0.60 of $0.50)"),
        ({"max_wall_minutes": 0.01}, "time limit reached (0.01 minutes)"),
    ],
)
def test_limits_park_the_task_with_what_happened(
    engine: Engine, make_worker: RunWorker, limits: dict, reason: str
) -> None:
    task_id = add_task(engine)
    scale = 1000 if "model" in limits else 1
    script = [
        reply(
            tool_call("bash", {"command": f"sleep 0.4; echo {i}"}), usage=(50 * scale, 25 * scale)
        )
        for i in range(3)
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm, **limits).work(drain=True)
    parked = task(engine, task_id)
    assert (parked.state, parked.reason) == (State.NEEDS_INPUT, reason)


def test_a_dead_model_parks_the_task_for_a_person_with_the_reason_and_keeps_the_work(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    task_id = add_task(engine)
    script = [
        reply(tool_call("write_file", {"path": "partial.txt", "content": "half done\n"})),
        error(500, "model server on fire"),
        error(500, "model server on fire"),
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm).work(drain=True)
    parked = task(engine, task_id)
    assert parked.state is State.NEEDS_INPUT  # not failed: a reply or Retry continues it
    assert parked.reason and "the model is unavailable" in parked.reason
    assert "on fire" in parked.reason and "kept on the branch" in parked.reason
    assert git(project, "show", f"{parked.branch}:partial.txt") == "half done"


def test_malformed_tool_calls_are_told_to_the_model_not_a_crash(
    engine: Engine, make_worker: RunWorker
) -> None:
    task_id = add_task(engine)
    script = [
        reply(tool_call("bash", '{"command": "ls')),  # cut-off JSON
        reply(tool_call("teleport", {"where": "prod"})),  # no such tool
        reply(tool_call("bash", {"cmd": "ls"})),  # wrong argument name
        reply(content="I think I'm done"),  # no tool call at all
        reply(tool_call("finish", {"summary": "done"})),
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm).work(drain=True)
    assert task(engine, task_id).state is State.AWAITING_APPROVAL
    told = [m["content"] for m in llm.requests[4]["messages"] if m["role"] in ("tool", "user")]
    assert any("not valid JSON" in t for t in told)
    assert any("unknown tool 'teleport'" in t for t in told)
    assert any("unexpected keyword argument 'cmd'" in t for t in told)
    assert any("Your reply had no tool call" in t for t in told)


def test_the_executor_command_drains_the_queue(
    project: Path, tmp_path: Path, docker_client: docker.DockerClient, sandbox_image: str
) -> None:
    home = tmp_path / "cli-home"
    env = {**os.environ, "NIGHTCREW_HOME": str(home), "NIGHTCREW_MODEL": "scripted-model"}
    env.pop("NIGHTCREW_CONFIG", None)
    env.pop("NIGHTCREW_DATABASE_URL", None)
    nightcrew = str(Path(sys.executable).with_name("nightcrew"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [nightcrew, *args], cwd=project, env=env, capture_output=True, text=True, timeout=120
        )

    assert run("add", "-q", "write hello.txt").stdout.strip() == "1"
    script = [
        reply(tool_call("write_file", {"path": "hello.txt", "content": "hello\n"})),
        reply(tool_call("finish", {"summary": "wrote hello.txt"})),
        reply(tool_call("submit_review", {"verdict": "approve", "summary": "ok", "findings": []})),
    ]
    with ScriptedLLM(script) as llm:
        env["OPENAI_BASE_URL"] = llm.base_url
        result = run("executor", "--drain")
    assert result.returncode == 0, result.stderr
    assert "did 1 run(s) of work" in result.stdout
    shown = run("show", "1").stdout
    assert "awaiting_approval" in shown and "wrote hello.txt" in shown
    log = run("log", "1").stdout
    assert "turn 1 (10 in / 5 out): write_file" in log and "wrote 6 bytes to hello.txt" in log
    assert "turn 2 (10 in / 5 out): finish" in log
    assert "running → checking" in log and "reviewing → awaiting_approval" in log
    assert git(project, "show", "nightcrew/1-write-hello-txt:hello.txt") == "hello"


def test_transient_model_faults_mid_task_recover(engine: Engine, make_worker: RunWorker) -> None:
    task_id = add_task(engine)
    script = [
        rate_limited("1"),
        reply(tool_call("write_file", {"path": "a.txt", "content": "a\n"})),
        hang(5),  # longer than the client's timeout
        reply(tool_call("bash", {"command": "cat a.txt"})),
        drop(midway=True),
        reply(tool_call("finish", {"summary": "survived"})),
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm, timeout=1).work(drain=True)
    done = task(engine, task_id)
    assert (done.state, done.turns) == (State.AWAITING_APPROVAL, 3)
    assert llm.received_at[1] - llm.received_at[0] >= 0.9  # Retry-After: 1 was honoured


def test_an_external_agent_command_streams_its_output_into_the_log(
    engine: Engine,
    make_worker: RunWorker,
    project: Path,
    docker_client: docker.DockerClient,
    test_executor: str,
) -> None:
    task_id = add_task(engine, "say hello")
    # The command goes on only once its first line is in the task's log: no race between
    # a sleep and the host's polls.
    command = (
        f"echo starting; echo $prompt > prompt.txt; {HOLD}; "
        "git add prompt.txt && git commit -qm 'external agent' && echo all done"
    )
    repo_options = {"agent": "command", "agent_command": command}

    def output() -> list[str]:
        with transaction(engine) as s:
            return [e.payload["text"] for e in events(s, task_id) if e.kind == "agent_output"]

    with ScriptedLLM([]) as llm:  # an external agent brings its own model
        worker = make_worker(llm, repo_options=repo_options)
        thread = threading.Thread(target=worker.work, kwargs={"drain": True})
        thread.start()
        try:
            wait_for(lambda: "starting" in "".join(output()), 30, "the first line in the log")
        finally:
            release(docker_client, test_executor)
            thread.join(120)
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, done.reason
    assert done.summary and done.summary.startswith("starting\nall done")
    assert git(project, "show", f"{done.branch}:prompt.txt") == "say hello"
    chunks = output()
    assert "".join(chunks).split() == ["starting", "all", "done"]
    assert len(chunks) >= 2, "output arrived while the command ran, not only at its end"


def test_a_failing_external_agent_parks_the_task(engine: Engine, make_worker: RunWorker) -> None:
    task_id = add_task(engine)
    repo_options = {"agent": "command", "agent_command": "echo no credentials >&2; exit 3"}
    with ScriptedLLM([]) as llm:
        make_worker(llm, repo_options=repo_options).work(drain=True)
    parked = task(engine, task_id)
    assert (parked.state, parked.reason) == (
        State.NEEDS_INPUT,
        "the agent command exited with code 3",
    )


def test_checkouts_of_closed_tasks_are_pruned(
    engine: Engine, make_worker: RunWorker, tmp_path: Path
) -> None:
    task_id = add_task(engine)
    with ScriptedLLM([reply(tool_call("finish", {"summary": "done"}))]) as llm:
        worker = make_worker(llm)
        worker.work(drain=True)
    checkout = tmp_path / "home" / "workspaces" / f"task-{task_id}"
    assert checkout.is_dir()  # kept while the task waits for approval
    worker.prune_workspaces()
    assert checkout.is_dir()
    with transaction(engine) as s:
        actions.reject(s, task_id, actor="U1")
    worker.prune_workspaces()
    assert not checkout.exists()


def run_in_thread(worker) -> threading.Thread:
    thread = threading.Thread(target=worker.work, kwargs={"drain": True})
    thread.start()
    return thread


def test_a_cancel_during_the_last_model_call_wins_over_finish(
    engine: Engine, make_worker: RunWorker
) -> None:
    task_id = add_task(engine)
    with ScriptedLLM([slow(3, reply(tool_call("finish", {"summary": "done"})))]) as llm:
        thread = run_in_thread(make_worker(llm))
        wait_for(lambda: len(llm.requests) == 1)
        with transaction(engine) as s:
            actions.cancel(s, task_id, actor="U1")
        thread.join(60)
    cancelled = task(engine, task_id)
    assert (cancelled.state, cancelled.reason) == (State.CANCELLED, "cancelled by U1")


def test_a_cancel_during_setup_is_a_cancel_not_a_failure(
    engine: Engine, make_worker: RunWorker, docker_client: docker.DockerClient, test_executor: str
) -> None:
    task_id = add_task(engine)
    with ScriptedLLM([]) as llm:
        worker = make_worker(llm, repo_options={"setup": ["sleep 60"]})
        thread = run_in_thread(worker)
        wait_for(
            lambda: running_in(containers_of(docker_client, test_executor), "sleep 60"),
            message="the setup command to run",
        )
        with transaction(engine) as s:
            actions.cancel(s, task_id, actor="U1")
        thread.join(60)
    assert task(engine, task_id).state is State.CANCELLED
    assert containers_of(docker_client, test_executor) == []


def test_an_executor_shutdown_requeues_the_task_with_its_work_saved(
    engine: Engine,
    make_worker: RunWorker,
    project: Path,
    docker_client: docker.DockerClient,
    test_executor: str,
) -> None:
    task_id = add_task(engine)
    script = [
        reply(tool_call("write_file", {"path": "wip.txt", "content": "half\n"})),
        reply(tool_call("bash", {"command": "sleep 60"})),
    ]
    with ScriptedLLM(script) as llm:
        worker = make_worker(llm)
        thread = run_in_thread(worker)
        wait_for(
            lambda: running_in(containers_of(docker_client, test_executor), "sleep 60"),
            message="the agent's second command to run",
        )
        worker.stop.set()  # what SIGTERM does
        thread.join(30)
    requeued = task(engine, task_id)
    assert requeued.state is State.QUEUED
    assert requeued.reason == "re-queued: the executor is shutting down"
    assert git(project, "show", f"{requeued.branch}:wip.txt") == "half"


def test_a_reply_of_the_wrong_shape_fails_the_task_cleanly(
    engine: Engine, make_worker: RunWorker, docker_client: docker.DockerClient, test_executor: str
) -> None:
    task_id = add_task(engine)
    wrong = '{"choices": [{"message": {"tool_calls": [{"id": "c1", "function": "bash"}]}}]}'
    with ScriptedLLM([Fault(200, body=wrong)] * 2) as llm:
        make_worker(llm).work(drain=True)
    failed = task(engine, task_id)
    assert failed.state is State.FAILED and failed.worker_id is None
    assert failed.error and "unexpected reply shape" in failed.error
    assert containers_of(docker_client, test_executor) == []


def test_big_and_binary_files_through_the_file_tools(
    engine: Engine, make_worker: RunWorker, project: Path
) -> None:
    (project / "latin1.txt").write_bytes(b"caf\xe9 ok\n")
    git(project, "add", ".")
    git(project, "commit", "-qm", "latin-1 file")
    task_id = add_task(engine)
    big = "x" * 299 + "\n"
    script = [
        reply(tool_call("write_file", {"path": "big.txt", "content": big * 1000})),
        reply(tool_call("edit_file", {"path": "big.txt", "old_text": "x\nx", "new_text": "y"})),
        reply(tool_call("edit_file", {"path": "latin1.txt", "old_text": "ok", "new_text": "no"})),
        reply(tool_call("finish", {"summary": "done"})),
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm).work(drain=True)
    told = [m["content"] for m in llm.requests[3]["messages"] if m["role"] == "tool"]
    assert told[0] == "wrote 300,000 bytes to big.txt"
    assert told[1].startswith("old_text found 999 times")
    assert told[2] == "latin1.txt is not UTF-8 text; edit it with bash (sed, python3) instead"
    done = task(engine, task_id)
    assert git(project, "show", f"{done.branch}:big.txt") == (big * 1000).strip()
    assert (project / "latin1.txt").read_bytes() == b"caf\xe9 ok\n"


def test_an_executor_with_concurrency_2_runs_two_tasks_at_once(
    engine: Engine, make_worker: RunWorker, project: Path, tmp_path: Path
) -> None:
    from executor.agents.llm import LLMClient
    from executor.config.schema import Config, RepoConfig
    from executor.runner.pool import run_executor

    ids = [add_task(engine, f"task {n}") for n in range(2)]
    sleep = reply(tool_call("bash", {"command": "sleep 2"}))
    done = reply(tool_call("finish", {"summary": "done"}))
    config = Config(repos={"app": RepoConfig(path=project, review={"enabled": False})})
    with ScriptedLLM([sleep, sleep, done, done]) as llm:
        performed = run_executor(
            engine=engine,
            config=config,
            home=tmp_path / "home",
            make_llm=lambda: LLMClient(base_url=llm.base_url, api_key=None, model="m"),
            concurrency=2,
            drain=True,
            log=lambda _: None,
        )
    assert performed == 2
    windows = []
    with transaction(engine) as s:
        for task_id in ids:
            times = {e.payload["to"]: e.created_at for e in events(s, task_id) if e.kind == "state"}
            windows.append((times["running"], times["awaiting_approval"]))
    (a_start, a_end), (b_start, b_end) = windows
    assert a_start < b_end and b_start < a_end, "the two tasks ran at the same time"
    assert [task(engine, i).state for i in ids] == [State.AWAITING_APPROVAL] * 2
