"""Dispatch latency: from claim, and as a person feels it, to the agent's first model request.

    uv run python bench/dispatch.py [--tasks 20] [--e2e 10] [--postgres]

Needs a Docker engine and the sandbox image (sandbox/build-image.sh). Each task's agent
finishes at once. Two measurements:
1. claim -> first request: a worker in this process drains `--tasks` tasks; from the task's
   queued->preparing event to the moment the scripted model server received its first
   request. Goal: median under 0.5 s.
2. end to end, with an idle `nightcrew executor` process already running: from the start of
   `nightcrew add` (the CLI process) and from sending a signed `/agent add` to a
   `nightcrew bot --http` process, to the agent's first model request; one task at a time,
   the executor idle again before the next. Goal: median under 0.3 s. SQLite by default;
   `--postgres`: a fresh database on NIGHTCREW_TEST_PG_URL's server (LISTEN/NOTIFY)."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlmodel import col, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ack import bot_process, signed
from bench.repo import make_repo
from bench.scale_out import drop_database, fresh_database
from executor.agents.llm import LLMClient
from executor.config.schema import Config, RepoConfig
from executor.runner.fleet import connect_docker, new_executor_id
from executor.runner.worker import Worker
from executor.sandbox.image import ensure_image
from storage.db import make_engine, transaction
from storage.lifecycle import State
from storage.models import Task
from storage.tasks import create_task, events
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.slack_emulator import SlackEmulator, slash_command

NIGHTCREW = str(Path(sys.executable).with_name("nightcrew"))
FINISH = reply(tool_call("finish", {"summary": "ok"}))


def claim_to_first_request(tasks: int) -> list[float]:
    client = connect_docker()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = make_engine(f"sqlite:///{root / 'bench.db'}")
        config = Config(repos={"app": RepoConfig(path=make_repo(root), review={"enabled": False})})
        with transaction(engine) as s:
            ids = [
                create_task(s, repo="app", prompt=f"bench {i}", requester="bench").id
                for i in range(tasks)
            ]
        with ScriptedLLM([FINISH for _ in ids]) as llm:
            llm_client = LLMClient(base_url=llm.base_url, api_key=None, model="bench")
            executor_id = new_executor_id(engine)
            worker = Worker(
                engine=engine,
                config=config,
                home=root / "home",
                docker=client,
                llm=llm_client,
                worker_id=f"{executor_id}/0",
                executor_id=executor_id,
            )
            worker.work(drain=True)
            first_request = {}
            for body, at in zip(llm.requests, llm.received_at, strict=True):
                task_id = int(re.search(r"Task (\d+) on repo", body["messages"][1]["content"])[1])
                first_request.setdefault(task_id, at)
        latencies = []
        with transaction(engine) as s:
            for task_id in ids:
                claim = next(
                    e
                    for e in events(s, task_id)
                    if e.kind == "state" and e.payload.get("to") == "preparing"
                )
                latencies.append(first_request[task_id] - claim.created_at.timestamp())
    return latencies


@contextmanager
def idle_executor(root: Path, env: dict[str, str], engine_url: str) -> Iterator[None]:
    """`nightcrew executor` as its own process, idle: its workers wait for work."""
    log = (root / "executor.log").open("w")
    proc = subprocess.Popen(
        [NIGHTCREW, "executor", "--concurrency", "1"],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while "worker(s)" not in (root / "executor.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"executor did not start:\n{(root / 'executor.log').read_text()}")
            time.sleep(0.1)
        time.sleep(2)  # its first look at the (empty) queue is over: idle
        yield
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def end_to_end(
    llm: ScriptedLLM, engine_url: str, count: int, start: Callable[[int], None]
) -> list[float]:
    """Per task: `start(i)` queues it; the time to the model's next request. The executor is
    idle again (the task parked) before the next one."""
    engine = make_engine(engine_url, create=False)
    latencies = []
    for i in range(count):
        seen = len(llm.requests)
        began = time.time()
        start(i)
        deadline = time.monotonic() + 60
        while len(llm.requests) == seen:
            if time.monotonic() > deadline:
                raise SystemExit("the agent never asked the model")
            time.sleep(0.002)
        latencies.append(llm.received_at[seen] - began)
        while True:  # parked: the worker is idle again
            parked = [State.AWAITING_APPROVAL, State.FAILED]
            with transaction(engine) as s:
                busy = s.exec(select(Task.id).where(col(Task.state).not_in(parked))).first()
            if busy is None:
                break
            time.sleep(0.05)
        time.sleep(0.5)  # its next, empty, claim is done: the worker waits on its bell
    engine.dispose()
    return latencies


def measure_end_to_end(count: int, database_url: str | None) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp, SlackEmulator() as slack:
        root = Path(tmp)
        repo = make_repo(root)
        (root / "nightcrew.yaml").write_text(
            f"repos:\n  app: {{path: {repo}, review: {{enabled: false}}}}\n"
        )
        url = database_url or f"sqlite:///{root / 'home' / 'nightcrew.db'}"
        make_engine(url).dispose()  # migrated once, before the processes start
        script = [FINISH for _ in range(2 * count)]
        with ScriptedLLM(script) as llm:
            env = {
                **os.environ,
                **slack.env(),
                "NIGHTCREW_HOME": str(root / "home"),
                "NIGHTCREW_CONFIG": str(root / "nightcrew.yaml"),
                "NIGHTCREW_DATABASE_URL": url,
                "NIGHTCREW_MODEL": "bench",
                "OPENAI_BASE_URL": llm.base_url,
            }
            os.environ.update(env)  # bot_process (bench/ack.py) passes its own environment on
            results: dict[str, list[float]] = {}
            with idle_executor(root, env, url):

                def cli(i: int) -> None:
                    subprocess.run(
                        [NIGHTCREW, "add", f"cli task {i}"],
                        env=env,
                        cwd=root,
                        check=True,
                        capture_output=True,
                    )

                results["nightcrew add"] = end_to_end(llm, url, count, cli)
                with bot_process(slack, root, 1) as (bot_url, _bot):
                    http = httpx.Client()

                    def slash(i: int) -> None:
                        body, headers = signed(slack, slash_command(f"add slack task {i}"))
                        http.post(bot_url, content=body, headers=headers).raise_for_status()

                    results["/agent add"] = end_to_end(llm, url, count, slash)
                    http.close()
    return results


def summary(latencies: list[float]) -> str:
    latencies = sorted(latencies)
    return (
        f"median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p90 {statistics.quantiles(latencies, n=10)[-1] * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--e2e", type=int, default=10, help="tasks per end-to-end measurement")
    parser.add_argument("--postgres", action="store_true", help="end to end on PostgreSQL")
    args = parser.parse_args()
    ensure_image(connect_docker())
    if args.tasks:
        latencies = claim_to_first_request(args.tasks)
        print(
            f"claim -> first LLM request ({len(latencies)} tasks): {summary(latencies)} "
            "(goal: median < 500 ms)"
        )
    if args.e2e:
        name, url = fresh_database() if args.postgres else (None, None)
        try:
            measured = measure_end_to_end(args.e2e, url)
        finally:
            if name:
                drop_database(name)
        for source, latencies in measured.items():
            print(
                f"{source} -> first LLM request, idle executor, "
                f"{'PostgreSQL' if url else 'SQLite'} ({len(latencies)} tasks): "
                f"{summary(latencies)} (goal: median < 300 ms)"
            )


if __name__ == "__main__":
    main()
