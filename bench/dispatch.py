"""Time from claim to the agent's first LLM request, over N tasks, with a warm image.

    uv run python bench/dispatch.py [--tasks 20]

Needs a Docker engine and the sandbox image (sandbox/build-image.sh). Each task's agent
finishes at once; we measure claim (the task's queued→preparing event) to the moment the
scripted model server received that task's first request. Goal: median under 0.5 s."""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.repo import make_repo
from executor.agents.llm import LLMClient
from executor.config.schema import Config, RepoConfig
from executor.runner.fleet import connect_docker, new_executor_id
from executor.runner.worker import Worker
from executor.sandbox.image import ensure_image
from storage.db import make_engine, transaction
from storage.tasks import create_task, events
from tests.llm_server import ScriptedLLM, reply, tool_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    client = connect_docker()
    ensure_image(client)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = make_engine(f"sqlite:///{root / 'bench.db'}")
        config = Config(repos={"app": RepoConfig(path=make_repo(root), review={"enabled": False})})
        with transaction(engine) as s:
            ids = [
                create_task(s, repo="app", prompt=f"bench {i}", requester="bench").id
                for i in range(args.tasks)
            ]
        script = [reply(tool_call("finish", {"summary": "ok"})) for _ in ids]
        with ScriptedLLM(script) as llm:
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
    latencies.sort()
    p90 = statistics.quantiles(latencies, n=10)[-1]
    print(f"tasks: {len(latencies)}")
    print(
        f"claim -> first LLM request: median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p90 {p90 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms (goal: median < 500 ms)"
    )


if __name__ == "__main__":
    main()
