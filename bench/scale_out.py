"""The queue with ten executor processes on one PostgreSQL: claim latency, throughput, and
that no task is claimed twice or lost.

    uv run python bench/scale_out.py [--tasks 1000] [--executors 10] [--workers 2] [--rate 25]

Needs the PostgreSQL server of NIGHTCREW_TEST_PG_URL (a fresh database is made and dropped)
and a Docker engine (each executor's maintenance sweeps it, as in production). Each executor
process runs the runner's claim loop (`Worker.work`: maintenance, planning requests, settle,
caps and budgets, the claim) with the wake-up listener (LISTEN/NOTIFY), and `--workers`
worker threads; a claimed task's "agent" is one request to the scripted model (answering at
once), then the task parks for approval. No sandbox is started: what a task costs in Docker
is `bench/fleet.py`'s and `bench/dispatch.py`'s subject; this one measures the queue.

Tasks are queued at `--rate` per second (each in its own transaction, as people and the bot
queue them), below what the fleet takes, so the claim latency (a task's creation to its
queued->preparing event, both database timestamps) is dispatch, not a backlog. Goal: claim
p99 200 ms or less; double claims and lost tasks 0."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text
from sqlmodel import col, select

from bot import actions
from executor.agents.llm import LLMClient
from executor.config.schema import Config, RepoConfig
from executor.runner.fleet import connect_docker, new_executor_id
from executor.runner.worker import Worker
from storage import wakeup
from storage.db import make_engine, normalize_url, transaction
from storage.lifecycle import State
from storage.models import Task, TaskEvent
from storage.tasks import transition
from tests.llm_server import ScriptedLLM, reply, tool_call

PG_ADMIN_URL = os.environ.get(
    "NIGHTCREW_TEST_PG_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
)
CONFIG = Config(repos={"app": RepoConfig(path=Path("/nonexistent"), review={"enabled": False})})


class NoSandboxWorker(Worker):
    """The runner's claim loop, unchanged; a task's run is one model request."""

    def perform(self, task: Task) -> None:
        assert task.id is not None
        mine = [col(Task.worker_id) == self.worker_id]
        with transaction(self.engine) as s:
            transition(s, task.id, State.RUNNING, actor=self.worker_id, where=mine)
        self.llm.complete([{"role": "user", "content": f"Task {task.id}"}])
        with transaction(self.engine) as s:
            transition(s, task.id, State.AWAITING_APPROVAL, actor=self.worker_id, where=mine)


def run_executor_process(url: str, llm_url: str, workers: int, wake: bool) -> None:
    """One executor process (the `--executor` mode of this script) until SIGTERM; without
    `wake`, its idle workers only poll (as before the wake-ups)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    engine = make_engine(url, create=False)
    docker = connect_docker()
    executor_id = new_executor_id(engine)
    llm = LLMClient(base_url=llm_url, api_key=None, model="bench")
    with wakeup.listen(engine, stop) as bell:
        threads = []
        for n in range(workers):
            worker = NoSandboxWorker(
                engine=engine,
                config=CONFIG,
                home=Path("/nonexistent"),
                docker=docker,
                llm=llm,
                worker_id=f"{executor_id}/{n}",
                executor_id=executor_id,
                stop=stop,
                bell=bell if wake else None,
            )
            threads.append(threading.Thread(target=worker.work))
        for thread in threads:
            thread.start()
        print("ready", flush=True)
        for thread in threads:
            thread.join()
    llm.close()


def fresh_database() -> tuple[str, str]:
    name = f"nightcrew_scale_{secrets.token_hex(4)}"
    admin = create_engine(normalize_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    admin = create_engine(normalize_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def queue_tasks(url: str, count: int, rate: float) -> None:
    engine = make_engine(url, create=False)
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        with transaction(engine) as s:
            actions.add(s, repo="app", prompt=f"short task {i}", requester="bench")
    engine.dispose()


def report(url: str, count: int) -> None:
    engine = make_engine(url, create=False)
    with transaction(engine) as s:
        tasks = {t.id: t for t in s.exec(select(Task))}
        claims = s.exec(
            select(TaskEvent).where(TaskEvent.kind == "state").order_by(col(TaskEvent.id))
        ).all()
    engine.dispose()
    claimed_at: dict[int, float] = {}
    claim_counts: Counter[int] = Counter()
    parked_at = []
    for event in claims:
        if event.payload.get("to") == "preparing":
            claim_counts[event.task_id] += 1
            claimed_at.setdefault(event.task_id, event.created_at.timestamp())
        elif event.payload.get("to") == "awaiting_approval":
            parked_at.append(event.created_at.timestamp())
    latencies = sorted(
        claimed_at[i] - t.created_at.timestamp() for i, t in tasks.items() if i in claimed_at
    )
    double = sum(n - 1 for n in claim_counts.values() if n > 1)
    lost = sum(1 for t in tasks.values() if t.state is not State.AWAITING_APPROVAL)
    first = min(t.created_at.timestamp() for t in tasks.values())
    span = max(parked_at) - first if parked_at else float("nan")
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(f"tasks: {len(tasks)} of {count} queued, {len(parked_at)} done")
    print(
        f"claim latency (queued -> claimed): p50 {statistics.median(latencies) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms (goal: p99 <= 200 ms)"
    )
    created = [t.created_at.timestamp() for t in tasks.values()]
    arrival = (len(created) - 1) / (max(created) - first) if len(created) > 1 else float("nan")
    print(
        f"throughput: {len(parked_at) / span:.1f} tasks/s (first queued to last done); "
        f"queued at {arrival:.1f} tasks/s (a busy machine slows the queuing process too)"
    )
    print(f"double claims: {double} (must be 0); lost tasks: {lost} (must be 0)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--executors", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="worker threads per executor")
    parser.add_argument("--rate", type=float, default=25.0, help="tasks queued per second")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--poll-only", action="store_true", help="no wake-ups: compare")
    parser.add_argument("--executor", nargs=2, metavar=("DB_URL", "LLM_URL"), help="internal")
    args = parser.parse_args()
    if args.executor:
        run_executor_process(*args.executor, args.workers, wake=not args.poll_only)
        return
    name, url = fresh_database()
    procs: list[subprocess.Popen[str]] = []
    try:
        make_engine(url).dispose()  # migrated once, before the executors start
        with ScriptedLLM([reply(tool_call("finish", {"summary": "ok"}))] * args.tasks) as llm:
            for _ in range(args.executors):
                command = [sys.executable, __file__, "--workers", str(args.workers)]
                command += ["--executor", url, llm.base_url]
                command += ["--poll-only"] if args.poll_only else []
                procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd="/"))
            for proc in procs:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise SystemExit("an executor did not start")
            queue_tasks(url, args.tasks, args.rate)
            engine = make_engine(url, create=False)
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                with transaction(engine) as s:
                    done = s.exec(
                        select(Task.id).where(col(Task.state) == State.AWAITING_APPROVAL)
                    ).all()
                if len(done) >= args.tasks:
                    break
                time.sleep(0.5)
            engine.dispose()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        report(url, args.tasks)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        drop_database(name)


if __name__ == "__main__":
    main()
