"""What a model outage costs the endpoint and the tasks: N callers (an executor's worker
threads) through an outage of S seconds, sharing one client (one gate) or each with its own.

    uv run python bench/outage.py [--callers 20] [--seconds 30] [--backoff 1] [--max-wait 20]

Prints the requests the endpoint saw during the outage (its first failures, then probes)
and how long after the outage ended the last caller had its answer. No Docker: the scripted
model over real HTTP and the real client. Goal: requests ≈ callers + one per backoff step
(not callers times steps), and every caller answered within one backoff step of the end."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from executor.agents.llm import LLMClient
from tests.llm_server import ScriptedLLM, reply

USER = [{"role": "user", "content": "hello"}]


def run(callers: int, seconds: float, backoff: float, max_wait: float, shared: bool) -> str:
    with ScriptedLLM([reply(content="ok")] * callers) as llm:

        def client() -> LLMClient:
            return LLMClient(
                base_url=llm.base_url, api_key=None, model="m", backoff=backoff, max_wait=max_wait
            )

        one = client()
        clients = [one] * callers if shared else [client() for _ in range(callers)]
        llm.fail_for(seconds)
        end = time.monotonic() + seconds
        with ThreadPoolExecutor(callers) as pool:
            answered = list(pool.map(lambda c: (c.complete(USER), time.monotonic())[1], clients))
        for c in set(clients):
            c.close()
    late = max(answered) - end
    steps = one.backoff.probes_within(seconds)
    how = "one shared client" if shared else "a client each   "
    return (
        f"{how}: {len(llm.failed_requests):4d} requests during the outage"
        f" (callers {callers} + steps {steps} = {callers + steps}),"
        f" last answer {late:5.1f} s after the end"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--backoff", type=float, default=1.0)
    parser.add_argument("--max-wait", type=float, default=20.0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # every failure is logged; the counts are what we want
    for shared in (True, False):
        print(run(args.callers, args.seconds, args.backoff, args.max_wait, shared), flush=True)


if __name__ == "__main__":
    main()
