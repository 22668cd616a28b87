"""Run as its own process: wait for the start time, claim until the queue is empty, print
the claimed ids as JSON. Used by the concurrent-claim test."""

from __future__ import annotations

import json
import sys
import time

from storage.db import make_engine, transaction
from storage.queue import claim_next


def main(url: str, worker: str, start_at: float) -> None:
    engine = make_engine(url, create=False)
    while time.time() < start_at:
        time.sleep(0.002)  # a start line, not a wait for state: the claimers race from it
    claimed: list[int] = []
    while True:
        with transaction(engine) as session:
            task = claim_next(session, worker)
            if task is None:
                break
            assert task.id is not None
            claimed.append(task.id)
    print(json.dumps(claimed))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
