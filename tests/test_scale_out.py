"""Scale out: one `nightcrew bot` and two `nightcrew executor` processes on one PostgreSQL,
each executor with its own id and its own Docker connection (DOCKER_HOST). 40 tasks come in
through Slack; one executor is killed with SIGKILL while it runs some of them; the other
takes them over after the heartbeat timeout. Every task finishes exactly once, in the state
its script calls for, with its card up to date and no sandbox left behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import docker
import pytest
from sqlmodel import col, select

from executor.runner.fleet import remove_stray_workspaces
from executor.sandbox.container import LABEL_EXECUTOR
from storage.db import make_engine, transaction
from storage.lifecycle import State
from storage.models import Outbox, Task, TaskEvent
from tests.conftest import git, need
from tests.digest_fixtures import all_tasks as tasks
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.slack_emulator import SlackEmulator, slash_command
from tests.waiting import wait_for
from tests.worker_fixtures import our_sandboxes

TASKS = 40
# Slack takes about one post per channel per second (the notifier paces itself so): four
# channels post the 40 cards in ~10 s. Milestones queue behind them and drain later.
CHANNELS = ["C111", "C112", "C113", "C114"]
HEARTBEAT_TIMEOUT_S = 5.0  # the watch beats every 2 s: room for a busy machine
NIGHTCREW = str(Path(sys.executable).with_name("nightcrew"))
FLEET_TAG = re.compile(r"fleet-(\d+)")


def asks(n: int) -> bool:
    """Every tenth task asks a question instead of finishing."""
    return n % 10 == 0


@dataclass(frozen=True)
class FleetModel:
    """The model for every task at once, by the task's tag in its prompt: write a file
    (a command that takes a moment, so a kill lands mid-run), then finish; or ask."""

    def serve(self, h: Any, request: dict[str, Any]) -> None:
        n = task_number(request)
        if any(m["role"] == "tool" for m in request["messages"]):
            step = reply(tool_call("finish", {"summary": f"wrote out-{n}.txt"}))
        elif asks(n):
            step = reply(tool_call("ask_human", {"question": f"which format for {n}?"}))
        else:
            command = f"sleep 1.5 && echo {n} > out-{n}.txt"
            step = reply(tool_call("bash", {"command": command}))
        step.serve(h, request)


def mounts() -> list[str]:
    """Mount points of this host (Linux: /proc/self/mountinfo's fifth field)."""
    with open("/proc/self/mountinfo") as info:
        return [line.split()[4] for line in info]


def task_number(request: dict[str, Any]) -> int:
    for message in request["messages"]:
        found = FLEET_TAG.search(str(message.get("content")))
        if found:
            return int(found.group(1))
    raise AssertionError("a request without a fleet task in it")


def number(task: Task) -> int:
    found = FLEET_TAG.search(task.prompt)
    assert found is not None
    return int(found.group(1))


def runs_per_task(llm: ScriptedLLM) -> Counter[int]:
    """Agent runs: conversations started (a first request has no assistant turn yet)."""
    return Counter(
        task_number(r)
        for r in llm.requests
        if not any(m["role"] == "assistant" for m in r["messages"])
    )


class DockerProxy:
    """A TCP front for the local Docker socket: an executor given DOCKER_HOST=tcp://… can
    only reach Docker through it, so its connection count shows DOCKER_HOST was used."""

    def __init__(self, target: str = "/var/run/docker.sock") -> None:
        self.target = target
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self._server.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)  # pass the half-close on (docker exec streams)

    def close(self) -> None:
        self._stop.set()
        self._server.close()


@pytest.fixture
def docker_proxy() -> Iterator[DockerProxy]:
    if not Path("/var/run/docker.sock").exists():
        # The proxy fronts the local socket; in CI a missing one fails the run (see need).
        need("Docker engine on /var/run/docker.sock", "the socket does not exist")
    proxy = DockerProxy()
    yield proxy
    proxy.close()


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [NIGHTCREW, *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_two_executors_and_a_bot_run_40_tasks_once_through_a_sigkill(
    fresh_pg_url: str,
    project: Path,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    sandbox_image: str,
    docker_proxy: DockerProxy,
    slack: SlackEmulator,
) -> None:
    began = time.monotonic()
    url = fresh_pg_url  # empty: the three processes race to migrate it at start
    config = tmp_path / "nightcrew.yaml"
    config.write_text(
        f"repos:\n  app:\n    path: {project}\n    base_branch: main\n"
        "    review: {enabled: false}\nchannels:\n" + "".join(f"  {c}: app\n" for c in CHANNELS)
    )
    procs: list[subprocess.Popen[str]] = []

    def env(name: str, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            **slack.env(),
            "NIGHTCREW_DATABASE_URL": url,
            "NIGHTCREW_HOME": str(tmp_path / name),  # each on "its own host"
            "NIGHTCREW_CONFIG": str(config),
            "NIGHTCREW_MODEL": "scripted-model",
            "OPENAI_BASE_URL": llm.base_url,
            "NIGHTCREW_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
            **extra,
        }

    llm = ScriptedLLM([FleetModel()] * (TASKS * 6)).start()
    try:
        procs.append(start(["bot"], env("bot"), project))
        doomed = start(["executor", "-c", "4"], env("exec-a"), project)
        survivor = start(
            ["executor", "-c", "4"], env("exec-b", DOCKER_HOST=docker_proxy.url), project
        )
        procs += [doomed, survivor]
        slack.wait_connected(timeout=60)
        for n in range(1, TASKS + 1):
            text = f"add fleet-{n:02d}: write out-{n}.txt"
            command = slash_command(text, channel_id=CHANNELS[n % len(CHANNELS)])
            envelope = slack.send_envelope("slash_commands", command, timeout=10)
            assert envelope.ack is not None and "queued task" in envelope.ack.payload["text"]
        engine = make_engine(url, create=False)

        # Kill the first executor once it has finished some tasks, in the middle of runs.
        mark = f"-{doomed.pid}-"
        finished = {State.AWAITING_APPROVAL, State.NEEDS_INPUT}

        def doomed_mid_run() -> list[int]:
            now, busy = tasks(engine), runs_per_task(llm)
            if not any(t.state in finished and mark in (t.executor or "") for t in now):
                return []
            return [
                t.id or 0
                for t in now
                if t.state is State.RUNNING and mark in (t.worker_id or "") and busy[number(t)]
            ]

        mid_run = wait_for(doomed_mid_run, 90, "the first executor mid-run")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        killed_at = time.monotonic()
        held = {t.id for t in tasks(engine) if mark in (t.worker_id or "")}
        assert set(mid_run) <= held
        wait_for(
            lambda: all(t.state in finished for t in tasks(engine)), 180, "every task to finish"
        )
        done_after = time.monotonic() - killed_at

        wait_for(lambda: all(t.thread_ts for t in tasks(engine)), 60, "every card in Slack")

        def the_dead_ones() -> list:  # the survivor may still hold a warm spare: its own
            return [
                c
                for c in our_sandboxes(docker_client, engine)
                if mark in (c.attrs.get("Labels") or {}).get(LABEL_EXECUTOR, "")
            ]

        wait_for(lambda: not the_dead_ones(), 30, "the dead executor's sandboxes swept")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
        llm.stop()
        # The killed executor is not started again here; what its next start would remove
        # (a folder it made in the very instant of the kill, no container naming it) goes
        # the same way now, or its loop mount outlives the test.
        remove_stray_workspaces(
            docker_client, tmp_path / "exec-a" / "sandboxes", grace=timedelta(0)
        )
    assert not [m for m in mounts() if m.startswith(str(tmp_path))], "a sandbox left mounted"
    survivor_out = outputs[2]
    assert survivor.returncode == 0, survivor_out

    # Every task finished once, in the state its script calls for, on a branch of its own.
    final = tasks(engine)
    assert len(final) == TASKS
    with transaction(engine) as s:
        log = s.exec(select(TaskEvent).order_by(col(TaskEvent.id))).all()
    runs = runs_per_task(llm)
    for t in final:
        assert t.id is not None
        n = number(t)
        mine = [e.payload for e in log if e.task_id == t.id and e.kind == "state"]
        claims = [e["by"] for e in mine if e["to"] == "preparing"]
        ends = [e for e in mine if State(e["to"]) in finished]
        assert len(ends) == 1, f"task {t.id} finished {len(ends)} times"
        if asks(n):
            assert t.state is State.NEEDS_INPUT and f"which format for {n}?" in (t.reason or "")
        else:
            assert t.state is State.AWAITING_APPROVAL, (t.id, t.state, t.reason)
            assert git(project, "show", f"{t.head_commit}:out-{n}.txt") == str(n)
        assert t.executor == claims[-1]  # the record of who ran it stays after it finished
        if t.id in held:  # taken over: the dead one's claim, the reaper, then the survivor
            assert len(claims) == 2 and mark in claims[0] and mark not in claims[1], claims
            assert any(e["by"] == "reaper" for e in mine)
            # Its run on the dead one (if the kill came after it started) and the new one.
            assert runs[n] == 2 if t.id in mid_run else runs[n] in (1, 2), runs[n]
        else:
            assert len(claims) == 1, f"task {t.id} claimed {claims}"
            assert runs[n] == 1, f"task {t.id}: {runs[n]} agent runs"
    by_executor = Counter(mark in (t.executor or "") for t in final)
    assert by_executor[True] and by_executor[False], by_executor  # both finished tasks
    assert docker_proxy.connections > 0  # the survivor reached Docker only via DOCKER_HOST

    # The bot posted every card, to the channel it came from, and Slack refused nothing.
    for t in final:
        card = slack.message(t.channel or "", t.thread_ts or "")
        assert card.text.startswith(f"Task {t.id} (") and t.prompt in card.text
    with transaction(engine) as s:
        failed = s.exec(select(Outbox).where(col(Outbox.last_error).is_not(None))).all()
    assert failed == []
    assert our_sandboxes(docker_client, engine) == []
    engine.dispose()
    wall = time.monotonic() - began
    print(f"\n{TASKS} tasks, 2 executors; {len(held)} taken over from the killed one: {wall:.0f} s")
    print(f"every task done {done_after:.0f} s after the kill")


def test_an_executor_uses_the_docker_engine_docker_host_names(
    tmp_path: Path, git_repo: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIGHTCREW_", "DOCKER_"))}
    env |= {
        "NIGHTCREW_HOME": str(tmp_path / "home"),
        "NIGHTCREW_MODEL": "scripted-model",
        "DOCKER_HOST": "tcp://127.0.0.1:9",  # nothing listens there
    }
    result = subprocess.run(
        [NIGHTCREW, "executor", "--drain"],
        cwd=git_repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot reach the Docker engine" in result.stderr and "127.0.0.1" in result.stderr
