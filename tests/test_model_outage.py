"""Model outages pause tasks, they do not kill them. A real executor (worker threads sharing
one LLM client), real sandboxes, the scripted model answering 500 to everything for a while:
the tasks wait (one probe request at a time for the whole process, shown on the card and in
`nightcrew ls`), then carry on from their last turn; only after the outage window do they
park for a person, with their work on the branch. A hung request is cut by its timeout."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import col, select

from bot import actions
from bot.slack.blocks import card
from executor.agents.llm import LLMClient
from storage.db import transaction
from storage.lifecycle import State
from storage.models import Outbox, TaskEvent
from tests.conftest import git
from tests.llm_server import ScriptedLLM, reply, stall, tool_call
from tests.outage_fixtures import Executor
from tests.waiting import wait_for
from tests.worker_fixtures import add_task, task

NIGHTCREW = str(Path(sys.executable).with_name("nightcrew"))
TAG = re.compile(r"outage-(\d+)")
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def tag_of(request: dict[str, Any]) -> int:
    for message in request["messages"]:
        found = TAG.search(str(message.get("content")))
        if found:
            return int(found.group(1))
    raise AssertionError("a request without a tagged task in it")


@dataclass
class OutageModel:
    """Every task: write `out-<n>.txt`, then finish. The first requests of `tasks` tasks
    wait for each other, and the outage (`start`) begins just before they are answered: the
    tasks' next requests all meet it mid-run."""

    tasks: int
    start: Callable[[], None]
    barrier: threading.Barrier = field(init=False)

    def __post_init__(self) -> None:
        self.barrier = threading.Barrier(self.tasks, action=self.start, timeout=120)

    def serve(self, h: Any, request: dict[str, Any]) -> None:
        n = tag_of(request)
        if any(m["role"] == "tool" for m in request["messages"]):
            step = reply(tool_call("finish", {"summary": f"wrote out-{n}.txt"}))
        else:
            self.barrier.wait()
            write = {"path": f"out-{n}.txt", "content": f"task {n}\n"}
            step = reply(tool_call("write_file", write))
        step.serve(h, request)


def events_of(engine: Engine, task_id: int, kind: str) -> list[TaskEvent]:
    with transaction(engine) as s:
        return list(
            s.exec(
                select(TaskEvent)
                .where(col(TaskEvent.task_id) == task_id, col(TaskEvent.kind) == kind)
                .order_by(col(TaskEvent.id))
            ).all()
        )


def nightcrew(db_url: str, project: Path, *args: str) -> str:
    env = {**os.environ, "NIGHTCREW_DATABASE_URL": db_url, "COLUMNS": "200"}
    env.pop("NIGHTCREW_CONFIG", None)
    done = subprocess.run(
        [NIGHTCREW, *args], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@sqlite_only
def test_three_tasks_wait_out_a_90_second_outage_then_finish(
    engine: Engine, db_url: str, project: Path, executor: Callable[..., Executor]
) -> None:
    """The issue's case: every request fails with 500 for 90 s while 3 tasks run. All three
    reach awaiting approval, no turn lost or repeated, and the model saw its first failures
    plus one probe per backoff step, not a request per task per step."""
    tasks, outage = 3, 90.0
    ids = [add_task(engine, f"outage-{n}: write out-{n}.txt") for n in range(tasks)]
    holder: dict[str, float] = {}

    def start_outage() -> None:
        holder["start"] = time.time()
        llm.fail_for(outage)

    llm = ScriptedLLM([OutageModel(tasks, start_outage)] * (2 * tasks)).start()
    try:
        ex = executor(llm, concurrency=tasks, backoff=1.0, max_wait=20.0, outage_window=600)
        # While it lasts: each task says it waits for the model, on its card and in `ls`.
        waiting = wait_for(
            lambda: all(task(engine, i).model_wait_since for i in ids) and ids,
            timeout=60,
            message="every task waiting for the model",
        )
        listing = nightcrew(db_url, project, "ls")
        assert listing.count("(waiting for the model)") == tasks, listing
        shown = nightcrew(db_url, project, "show", str(ids[0]))
        assert "waiting for the model" in shown and "HTTP 500" in shown, shown
        for task_id in waiting:
            current = task(engine, task_id)
            assert current.state is State.RUNNING
            text = str(card(current)[1])
            assert "Waiting for the model" in text and "HTTP 500" in text, text
            assert len(events_of(engine, task_id, "model_waiting")) == 1
        with transaction(engine) as s:  # the card is asked to show it
            rows = s.exec(select(Outbox).where(col(Outbox.kind) == "card")).all()
            assert {r.task_id for r in rows} >= set(ids)
        ex.join(timeout=outage + 120)
    finally:
        llm.stop()

    for task_id in ids:
        done = task(engine, task_id)
        assert done.state is State.AWAITING_APPROVAL, (done.state, done.reason)
        assert done.model_wait_since is None and done.model_wait is None
        assert len(events_of(engine, task_id, "turn")) == 2  # no turn lost or repeated
        (back,) = events_of(engine, task_id, "model_back")
        assert back.payload["waited_s"] >= outage - 30
        assert git(project, "show", f"{done.branch}:out-{tag_of_prompt(done.prompt)}.txt")
    # Each task asked twice and was answered twice; the second request carried the whole
    # conversation so far (the write and its result), as it was before the outage.
    assert len(llm.requests) == 2 * tasks
    for later in (r for r in llm.requests if any(m["role"] == "tool" for m in r["messages"])):
        roles = [m["role"] for m in later["messages"]]
        assert roles[-2:] == ["assistant", "tool"], roles
    # The model's view of the outage: the requests under way when it began (at most one per
    # task, about together), then probes one at a time after each backoff step (1, 2, 4, 8,
    # 16 then 20 s, less up to a quarter).
    times = sorted(at - holder["start"] for at, _ in llm.failed_requests)
    steps = LLMClient(base_url=llm.base_url, api_key=None, model="m", backoff=1.0, max_wait=20.0)
    probes = steps.backoff.probes_within(outage, jitter=0.999)
    print(f"outage requests at {[round(x, 1) for x in times]} s; probes allowed {probes}")
    assert 1 <= len(times) <= tasks + probes, times
    together = [b - a for a, b in itertools.pairwise(times) if b - a < 0.7]
    assert len(together) < tasks, f"more than one probe at a time: {times}"
    assert len(times) < tasks * (probes + 1)  # what a probe per task per step would be


def tag_of_prompt(prompt: str) -> int:
    found = TAG.search(prompt)
    assert found is not None
    return int(found.group(1))


@dataclass
class PartialThenOutage:
    """Write partial.txt; the outage starts as that reply goes out and outlasts the test."""

    llm: ScriptedLLM

    def serve(self, h: Any, request: dict[str, Any]) -> None:
        self.llm.fail_for(600)
        write = {"path": "partial.txt", "content": "half done\n"}
        reply(tool_call("write_file", write)).serve(h, request)


def test_after_the_window_a_task_parks_for_a_person_with_its_work_kept(
    engine: Engine, project: Path, executor: Callable[..., Executor]
) -> None:
    task_id = add_task(engine)
    llm = ScriptedLLM()
    llm.add(PartialThenOutage(llm))
    with llm:
        executor(llm, backoff=0.5, max_wait=1.0, outage_window=5).join(timeout=120)
    parked = task(engine, task_id)
    assert parked.state is State.NEEDS_INPUT, (parked.state, parked.reason)
    reason = parked.reason or ""
    assert "the model is unavailable" in reason
    assert "kept failing for" in reason and "outage window 5 s" in reason
    assert "HTTP 500" in reason and "kept on the branch" in reason
    assert parked.model_wait_since is None  # the card no longer says it waits
    assert git(project, "show", f"{parked.branch}:partial.txt") == "half done"
    assert len(events_of(engine, task_id, "model_waiting")) == 1
    assert events_of(engine, task_id, "model_back") == []
    # A person continues it: a retry queues it again (here it would wait for the model anew).
    with transaction(engine) as s:
        actions.retry(s, task_id, actor="U1")
    assert task(engine, task_id).state is State.QUEUED


def test_a_cancel_ends_the_wait_for_the_model(
    engine: Engine, project: Path, executor: Callable[..., Executor]
) -> None:
    task_id = add_task(engine)
    llm = ScriptedLLM()
    llm.add(PartialThenOutage(llm))
    with llm:
        ex = executor(llm, backoff=0.5, max_wait=1.0, outage_window=600)
        wait_for(lambda: task(engine, task_id).model_wait_since, 60, "the task to wait")
        asked = time.monotonic()
        with transaction(engine) as s:
            actions.cancel(s, task_id, actor="U1")
        ex.join(timeout=60)
        took = time.monotonic() - asked
    cancelled = task(engine, task_id)
    assert cancelled.state is State.CANCELLED
    assert took < 20  # a heartbeat (2 s) and a tick (1 s), and the hand-back
    assert cancelled.model_wait_since is None


def test_a_stream_that_stops_midway_is_cut_and_the_task_carries_on(
    engine: Engine, project: Path, executor: Callable[..., Executor]
) -> None:
    """Today's failure was a task held for minutes by one hung request: the idle timeout
    cuts it after a second here, and the same turn is asked again."""
    task_id = add_task(engine)
    write = {"path": "done.txt", "content": "done\n"}
    script = [
        stall(120),
        reply(tool_call("write_file", write)),
        reply(tool_call("finish", {"summary": "wrote done.txt"})),
    ]
    start = time.monotonic()
    with ScriptedLLM(script) as llm:
        executor(llm, stream=True, idle_timeout=1.0, backoff=0.2).join(timeout=120)
    took = time.monotonic() - start
    done = task(engine, task_id)
    assert done.state is State.AWAITING_APPROVAL, (done.state, done.reason)
    assert took < 60  # not the stall's 120 s
    assert llm.requests[0]["messages"] == llm.requests[1]["messages"]  # the same turn again
    assert len(events_of(engine, task_id, "turn")) == 2
