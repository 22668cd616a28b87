"""Fleet throughput: makespan of N tasks at concurrency C against a model with a fixed delay
per turn, divided by the ideal (total model time / C).

    uv run python bench/fleet.py [--tasks 32] [--concurrency 8] [--turns 3] [--delay 2.0]

Needs a Docker engine and the sandbox image (sandbox/build-image.sh). Each task's agent makes
`turns` model calls (bash, ..., finish), each answered after `delay` seconds; checks and
review are off, so what the ratio shows is nightcrew's own overhead per task (claim, clone,
sandbox, hand-back, records). Goal: 1.10 or less."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import Event, Pipe, Process
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.repo import make_repo
from executor.agents.llm import LLMClient
from executor.config.schema import Config, RepoConfig
from executor.runner.pool import run_executor
from storage.db import make_engine, transaction
from storage.lifecycle import State
from storage.tasks import create_task, events, list_tasks
from tests.llm_server import ScriptedLLM, reply, tool_call


@dataclass(frozen=True)
class TurnByTurn:
    """Answers after `delay` s: bash until the agent's last turn, then finish. Agents run
    interleaved, so the answer depends on the request (its turn), not on the order."""

    delay: float
    turns: int

    def serve(self, h: Any, request: dict[str, Any]) -> None:
        h.llm.stopping.wait(self.delay)
        done = sum(1 for m in request["messages"] if m["role"] == "assistant")
        last = done >= self.turns - 1
        call = (
            tool_call("finish", {"summary": "ok"})
            if last
            else tool_call("bash", {"command": "true"})
        )
        reply(call).serve(h, request)


def _serve(script: list[Any], address: Connection, stop: Event) -> None:
    with ScriptedLLM(script) as llm:
        address.send(llm.base_url)
        stop.wait()


@contextmanager
def model_process(script: list[Any]) -> Iterator[str]:
    """The scripted model in a process of its own, as a real model is elsewhere: in the
    executor's interpreter its HTTP threads took the GIL from the workers it answers."""
    ours, theirs = Pipe()
    stop = Event()
    server = Process(target=_serve, args=(script, theirs, stop), daemon=True)
    server.start()
    try:
        yield ours.recv()
    finally:
        stop.set()
        server.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds per model turn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = make_engine(f"sqlite:///{root / 'bench.db'}")
        repo = RepoConfig(path=make_repo(root), review={"enabled": False})
        with transaction(engine) as s:
            for i in range(args.tasks):
                create_task(s, repo="app", prompt=f"bench {i}", requester="bench")
        script = [TurnByTurn(args.delay, args.turns)] * (args.tasks * args.turns)
        with model_process(script) as base_url:
            started = time.monotonic()
            done = run_executor(
                engine=engine,
                config=Config(repos={"app": repo}),
                home=root / "home",
                make_llm=lambda: LLMClient(base_url=base_url, api_key=None, model="bench"),
                concurrency=args.concurrency,
                drain=True,
                log=lambda _: None,
            )
            makespan = time.monotonic() - started
            ended = time.time()
        with transaction(engine) as s:
            parked = list_tasks(s, states=[State.AWAITING_APPROVAL])
            phases = _phases(s, [t.id for t in parked if t.id is not None])
            first_claim, last_parked = _span(s, [t.id for t in parked if t.id is not None])
    ideal = args.tasks * args.turns * args.delay / args.concurrency
    print(f"tasks: {done} run, {len(parked)} awaiting approval")
    print(
        f"makespan {makespan:.1f} s, ideal {ideal:.1f} s "
        f"({args.tasks} tasks x {args.turns} turns x {args.delay:g} s / {args.concurrency}): "
        f"ratio {makespan / ideal:.2f} (goal: 1.10 or less)"
    )
    print("median per task: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    start_up = first_claim - (ended - makespan)
    print(
        f"of the makespan: start-up to the first claim {start_up:.1f} s (sweep, images, spares), "
        f"first claim to last parked {last_parked - first_claim:.1f} s "
        f"(ratio {(last_parked - first_claim) / ideal:.2f}), "
        f"last parked to the executor's return {ended - last_parked:.1f} s (spares removed)"
    )


def _span(session: Any, ids: list[int]) -> tuple[float, float]:
    """(first claim, last parked), as epoch seconds from the tasks' events."""
    claims, parks = [], []
    for task_id in ids:
        for e in events(session, task_id):
            if e.kind == "state" and e.payload["to"] == "preparing":
                claims.append(e.created_at.timestamp())
            if e.kind == "state" and e.payload["to"] == "awaiting_approval":
                parks.append(e.created_at.timestamp())
    return min(claims), max(parks)


def _phases(session: Any, ids: list[int]) -> dict[str, float]:
    """Median seconds of each phase: claim to running (workspace, sandbox), running to
    checking (the agent, model time included), checking to parked (checkpoint, pipeline)."""
    spans: dict[str, list[float]] = {"prepare": [], "agent": [], "pipeline": []}
    for task_id in ids:
        at = {e.payload["to"]: e.created_at for e in events(session, task_id) if e.kind == "state"}
        spans["prepare"].append((at["running"] - at["preparing"]).total_seconds())
        spans["agent"].append((at["checking"] - at["running"]).total_seconds())
        spans["pipeline"].append((at["awaiting_approval"] - at["checking"]).total_seconds())
    return {k: statistics.median(v) for k, v in spans.items() if v}


if __name__ == "__main__":
    main()
