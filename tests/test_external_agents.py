"""Real external agents in the sandbox: aider, Codex CLI and Claude Code, installed for real
from PyPI and npm into the agent image (tests/agent_fixtures.py), talking to the scripted
model only through the egress allowlist proxy (`network: [model]`); nothing else reachable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from sqlalchemy import Engine

from bot import actions
from bot.terminal import doctor
from executor.sandbox.container import Sandbox
from storage.db import transaction
from storage.lifecycle import State
from storage.tasks import events
from tests.conftest import git
from tests.llm_server import ScriptedLLM, hang, reply, slow, tool_call
from tests.worker_fixtures import RunWorker, add_task, task, wait_for

NIGHTCREW = str(Path(sys.executable).parent / "nightcrew")
FIXED = "def add(a, b):\n    return a + b\n"
# aider's "whole" edit format: the file's path, then its whole new content fenced.
AIDER_FIX = f"I fixed the operator.\n\ncalc.py\n```\n{FIXED}```\n"


# What an external agent does does not depend on the database (the queue, the lifecycle and
# crash safety are tested on both elsewhere): these tests, each tens of seconds of a real
# agent CLI, run once, on SQLite.
one_database = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def show(engine: Engine, project: Path, task_id: int) -> str:
    env = {**os.environ, "NIGHTCREW_DATABASE_URL": engine.url.render_as_string(False)}
    env.pop("NIGHTCREW_CONFIG", None)
    shown = subprocess.run(
        [NIGHTCREW, "show", str(task_id)], cwd=project, env=env, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


@one_database
def test_aider_completes_a_task_through_the_allowlist_proxy(
    engine: Engine, make_worker: RunWorker, project: Path, agent_image: str
) -> None:
    task_id = add_task(engine, "fix add() in calc.py")
    options = {
        "agent": "aider",
        "image": agent_image,
        "network": ["model"],
        "checks": ["python3 -m unittest -q"],
    }
    with ScriptedLLM([reply(content=AIDER_FIX, usage=(1200, 80))]) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
        asked = [m["content"] for m in llm.requests[0]["messages"] if m["role"] == "user"]
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, told(engine, task_id)
    assert git(project, "show", f"{done.branch}:calc.py") == FIXED.strip()
    assert any("fix add() in calc.py" in text for text in asked)
    assert (done.turns, done.tokens_in, done.tokens_out) == (1, 1200, 80)
    shown = show(engine, project, task_id)
    assert "1,280" in shown or "1280" in shown, shown
    with transaction(engine) as s:
        logged = events(s, task_id)
        kinds = [e.kind for e in logged]
        refused = [e.payload for e in logged if e.kind == "egress_refused"]
        output = "".join(e.payload.get("text", "") for e in logged if e.kind == "agent_output")
    assert "checks_passed" in kinds
    # aider fetches LiteLLM's price list at start: refused and logged like any other host.
    assert refused == [{"host": "raw.githubusercontent.com", "port": 443, "count": 1}]
    assert "Tokens: 1.2k sent, 80 received." in output


def aider_writes(text: str, usage: tuple[int, int] = (500, 40)):
    return reply(content=f"Done.\n\ncalc.py\n```\n{text}```\n", usage=usage)


def user_text(request: dict) -> str:
    return "\n".join(str(m["content"]) for m in request["messages"] if m["role"] == "user")


@one_database
def test_a_nudge_and_request_changes_reach_aider_and_failed_checks_too(
    engine: Engine, make_worker: RunWorker, project: Path, agent_image: str
) -> None:
    task_id = add_task(engine, "fix add() in calc.py")
    options = {
        "agent": "aider",
        "image": agent_image,
        "network": ["model"],
        "checks": ["python3 -m unittest -q"],
    }
    documented = '"""Add two numbers."""\n'
    script = [
        aider_writes("def add(a, b):\n    return a * b\n"),  # wrong: the checks fail
        aider_writes(FIXED),
        aider_writes(documented + FIXED),
        aider_writes(documented + "# checked\n" + FIXED),
    ]
    with ScriptedLLM(script) as llm:
        worker = make_worker(llm, repo_options=options)
        worker.work(drain=True)
        assert task(engine, task_id).state is State.AWAITING_APPROVAL
        assert "FAIL" in user_text(llm.requests[1]) or "fail" in user_text(llm.requests[1])
        with transaction(engine) as s:
            actions.nudge(s, task_id, "please add a docstring", actor="U1")
        worker.work(drain=True)
        assert "please add a docstring" in user_text(llm.requests[2])
        with transaction(engine) as s:  # the "Request changes" modal's path
            actions.nudge(s, task_id, "mark it as checked", actor="U1", source="slack")
        worker.work(drain=True)
        assert "mark it as checked" in user_text(llm.requests[3])
        assert llm.remaining == 0
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, told(engine, task_id)
    final = git(project, "show", f"{done.branch}:calc.py")
    assert final.startswith('"""Add two numbers."""\n# checked')
    assert done.turns == 4 and done.tokens_in == 2000


@one_database
def test_codex_completes_a_task_through_the_allowlist_proxy(
    engine: Engine, make_worker: RunWorker, project: Path, agent_image: str
) -> None:
    task_id = add_task(engine, "fix add() in calc.py")
    options = {
        "agent": "codex",
        "image": agent_image,
        "network": ["model"],
        "checks": ["python3 -m unittest -q"],
    }
    fix = f"printf '%s' '{FIXED}' > calc.py && python3 -m unittest -q"
    script = [
        reply(tool_call("exec_command", {"cmd": fix, "tty": False}), usage=(900, 60)),
        reply(content="Fixed add(): it subtracted.", usage=(1100, 20)),
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
        assert llm.remaining == 0
        first, second = llm.requests
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, told(engine, task_id)
    assert git(project, "show", f"{done.branch}:calc.py") == FIXED.strip()
    assert "fix add() in calc.py" in json.dumps(first["input"])
    outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert outputs and "OK" in json.dumps(outputs), "codex ran the command and sent its output"
    assert (done.turns, done.tokens_in, done.tokens_out) == (1, 2000, 80)
    assert "2,080" in show(engine, project, task_id)
    with transaction(engine) as s:
        refused = [e.payload for e in events(s, task_id) if e.kind == "egress_refused"]
    # What Codex 0.171 still tries at start (plugin and app listings), refused and logged;
    # its update check and analytics are switched off by the preset.
    hosts = {r["host"] for r in refused}
    assert hosts <= {"api.github.com", "github.com", "chatgpt.com"}, refused
    assert "127.0.0.1" not in hosts, "every model call went through"


def test_claude_code_is_installed_and_runs_headless_in_the_image(
    make_sandbox: Callable[..., Sandbox], agent_image: str
) -> None:
    sandbox = make_sandbox(image=agent_image)
    assert sandbox.exec("claude --version").output.strip().endswith("(Claude Code)")
    assert sandbox.exec("aider --version").output.strip() == "aider 0.86.2"
    assert sandbox.exec("codex --version").output.strip() == "codex-cli 0.171.0"


def told(engine: Engine, task_id: int) -> str:
    """Why a task stopped, with the end of what its agent printed: a failing assertion on
    an external agent's state says what the agent itself said."""
    done = task(engine, task_id)
    with transaction(engine) as s:
        output = "".join(
            e.payload.get("text", "") for e in events(s, task_id) if e.kind == "agent_output"
        )
    return f"{done.reason}\n--- agent output (end) ---\n{output[-3000:]}"


def claude_side_call(body: dict) -> bool:
    """Claude Code's warm-ups and its small model's summaries run beside the main loop."""
    first = body["messages"][0]["content"]
    text = first if isinstance(first, str) else first[0].get("text", "")
    return text == "Warmup" or "haiku" in str(body.get("model"))


@one_database
def test_claude_code_completes_a_task_against_a_scripted_anthropic_server(
    engine: Engine,
    make_worker: RunWorker,
    project: Path,
    agent_image: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task_id = add_task(engine, "fix add() in calc.py")
    fix = f"printf '%s' '{FIXED}' > calc.py"
    script = [
        reply(tool_call("Bash", {"command": fix, "description": "fix"}), usage=(3000, 50)),
        reply(content="Fixed add().", usage=(3200, 12)),
    ]
    with ScriptedLLM(script, background=claude_side_call) as llm:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", llm.base_url.removesuffix("/v1"))
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-scripted")
        options = {
            "agent": "claude-code",
            "image": agent_image,
            "network": ["model"],  # the scripted server speaks both APIs on one port
            "agent_env": ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"],
            "checks": ["python3 -m unittest -q"],
        }
        make_worker(llm, repo_options=options).work(drain=True)
        assert llm.remaining == 0
        assert "fix add() in calc.py" in json.dumps(llm.requests[0]["messages"])
        assert llm.headers[0]["x-api-key"] == "sk-ant-scripted"
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, told(engine, task_id)
    assert git(project, "show", f"{done.branch}:calc.py") == FIXED.strip()
    with transaction(engine) as s:
        output = "".join(
            e.payload.get("text", "") for e in events(s, task_id) if e.kind == "agent_output"
        )
        refused = [e.payload for e in events(s, task_id) if e.kind == "egress_refused"]
    result = json.loads(output.strip().splitlines()[-1])  # its documented JSON result
    assert result["type"] == "result" and result["num_turns"] == done.turns == 2
    assert (done.tokens_in, done.tokens_out) == (6200, 62)
    assert done.cost_nanos == round(result["total_cost_usd"] * 1_000_000_000)
    # One call of its own to Anthropic's API (not through ANTHROPIC_BASE_URL), refused:
    # with the real API that host is on the allowlist anyway.
    assert refused == [{"host": "api.anthropic.com", "port": 443, "count": 1}]


@one_database
def test_a_token_limit_kills_aider_mid_run(
    engine: Engine, make_worker: RunWorker, project: Path, agent_image: str
) -> None:
    task_id = add_task(engine, "fix add() in calc.py")
    options = {"agent": "aider", "image": agent_image, "network": ["model"]}
    # Naming a file of the repo makes aider add it to the chat and ask the model again; that
    # second call would hang for a minute. The first reply's tokens are over the limit: the
    # agent is killed instead of waited for, and the task parks with the reason.
    first = reply(content="Let me read test_calc.py first.", usage=(1500, 80))
    with ScriptedLLM([first, hang(60)]) as llm:
        hung_at: list[float] = []  # when the hanging second request came in

        def watch() -> None:
            while not hung_at and len(llm.requests) < 2:
                time.sleep(0.05)
            hung_at.append(time.monotonic())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        make_worker(llm, repo_options=options, max_tokens=1000).work(drain=True)
        done_at = time.monotonic()
        hung_at.append(done_at)  # ends the watch if the request never came
        watcher.join(5)
        # Timed from the hanging request, not the start: the image's start and aider's own
        # start-up take tens of seconds on a loaded machine. Waited for, it would be 60 s.
        assert done_at - hung_at[0] < 40, "the agent was stopped, not waited for"
    stopped = task(engine, task_id)
    assert stopped.state is State.NEEDS_INPUT
    assert stopped.reason == "token limit reached (1,580 of 1,000)"
    assert (stopped.tokens_in, stopped.tokens_out) == (1500, 80), "what it used is charged"


@one_database
def test_failed_checks_resume_codex_in_its_own_conversation(
    engine: Engine, make_worker: RunWorker, project: Path, agent_image: str
) -> None:
    task_id = add_task(engine, "fix add() in calc.py")
    options = {
        "agent": "codex",
        "image": agent_image,
        "network": ["model"],
        "checks": ["python3 -m unittest -q"],
    }
    wrong = "printf '%s' 'def add(a, b):\n    return a * b\n' > calc.py"
    right = f"printf '%s' '{FIXED}' > calc.py"
    script = [
        reply(tool_call("exec_command", {"cmd": wrong, "tty": False})),
        reply(content="Done."),
        reply(tool_call("exec_command", {"cmd": right, "tty": False})),
        reply(content="Fixed for real."),
    ]
    with ScriptedLLM(script) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
        assert llm.remaining == 0
        resumed = json.dumps(llm.requests[2]["input"])
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, told(engine, task_id)
    assert git(project, "show", f"{done.branch}:calc.py") == FIXED.strip()
    assert "FAIL" in resumed or "failed" in resumed, "the failed checks reached codex"
    assert "return a * b" in resumed, "in the same conversation: its earlier call is there"
    assert done.turns == 2


def test_doctor_says_when_a_repos_agent_is_missing_from_its_image(
    docker_client: docker.DockerClient, sandbox_image: str, agent_image: str
) -> None:
    missing = doctor.check_agent(docker_client, sandbox_image, "aider")
    assert missing.failed and "`aider` is not in the image" in missing.detail
    assert "nightcrew image build --agents aider" in (missing.fix or "")
    for agent in ("aider", "codex", "claude-code"):
        assert not doctor.check_agent(docker_client, agent_image, agent).failed


def test_image_build_reuses_the_built_image_and_refuses_unknown_agents(agent_image: str) -> None:
    built = subprocess.run(
        [NIGHTCREW, "image", "build", "--agents", "claude-code,aider,codex,aider"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip().splitlines()[-1] == agent_image, "same recipe, same image"
    unknown = subprocess.run(
        [NIGHTCREW, "image", "build", "--agents", "aider,cursor"], capture_output=True, text=True
    )
    assert unknown.returncode == 1 and "unknown agents cursor" in unknown.stderr


def codex_runs(command: str, summary: str = "Done."):
    return [
        reply(tool_call("exec_command", {"cmd": command, "tty": False})),
        reply(content=summary),
    ]


@one_database
def test_a_rebase_conflict_is_resolved_by_the_tasks_own_agent(
    engine: Engine, make_worker: RunWorker, project: Path, agent_image: str
) -> None:
    options = {
        "agent": "codex",
        "image": agent_image,
        "network": ["model"],
        "checks": ["python3 -m unittest -q"],
    }
    one, two = add_task(engine, "mark add() one"), add_task(engine, "mark add() two")
    write = "printf '%s' 'def add(a, b):\n    return a + b  # {}\n' > calc.py"
    script = codex_runs(write.format("one")) + codex_runs(write.format("two"))
    with ScriptedLLM(script) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
    for task_id in (one, two):
        assert task(engine, task_id).state is State.AWAITING_APPROVAL
        with transaction(engine) as s:
            actions.approve(s, task_id, actor="U1")
    resolve = (
        write.format("one, two") + " && git add calc.py && GIT_EDITOR=true git rebase --continue"
    )
    with ScriptedLLM(codex_runs(resolve, "Resolved.")) as llm:
        make_worker(llm, repo_options=options).work(drain=True)
        assert llm.remaining == 0, "codex, not the built-in agent, resolved the conflict"
        asked = json.dumps(llm.requests[0]["input"])
    assert "conflict" in asked.lower() and "mark add() two" in asked
    assert task(engine, one).state is State.MERGED
    resolved = task(engine, two)
    assert resolved.state is State.AWAITING_APPROVAL, told(engine, two)
    assert "approve again" in (resolved.reason or "")
    assert "# one, two" in git(project, "show", f"{resolved.branch}:calc.py")


@one_database
def test_a_nudge_sent_while_aider_runs_reaches_it_in_a_follow_up_run(
    engine: Engine, make_worker: RunWorker, project: Path, agent_image: str
) -> None:
    task_id = add_task(engine, "fix add() in calc.py")
    options = {"agent": "aider", "image": agent_image, "network": ["model"]}
    script = [slow(3, aider_writes(FIXED)), aider_writes('"""Sum."""\n' + FIXED)]

    def nudge_once_asked() -> None:
        wait_for(lambda: len(llm.requests) >= 1)
        with transaction(engine) as s:
            actions.nudge(s, task_id, "and document it", actor="U1")

    with ScriptedLLM(script) as llm:
        nudger = threading.Thread(target=nudge_once_asked)
        nudger.start()
        make_worker(llm, repo_options=options).work(drain=True)
        nudger.join()
        assert llm.remaining == 0
        assert "and document it" in user_text(llm.requests[1])
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, told(engine, task_id)
    assert git(project, "show", f"{done.branch}:calc.py").startswith('"""Sum."""')
