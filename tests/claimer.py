"""Run as its own process: connect, meet the other claimers at a barrier, claim until the
queue is empty, print the claimed ids as JSON. Used by the concurrent-claim tests."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sqlalchemy import text

from storage.db import make_engine, transaction
from storage.queue import claim_next

WORK_AFTER_CLAIM_S = 0.003  # a real worker does something between claims; a tight loop
# on SQLite can hold the write lock back to back and starve the other process entirely


def _meet(barrier: Path, worker: str, parties: int) -> None:
    """A start line every process reaches only when connected: a fixed start time failed
    under load, when one process was still importing as the other emptied the queue."""
    (barrier / worker).touch()
    deadline = time.monotonic() + 90
    while len(list(barrier.iterdir())) < parties:
        if time.monotonic() > deadline:
            raise SystemExit(f"{worker}: the other claimers never arrived")
        time.sleep(0.002)


def main(url: str, worker: str, barrier: Path, parties: int) -> None:
    engine = make_engine(url, create=False)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    _meet(barrier, worker, parties)
    claimed: list[int] = []
    while True:
        with transaction(engine) as session:
            task = claim_next(session, worker)
            if task is None:
                break
            assert task.id is not None
            claimed.append(task.id)
        time.sleep(WORK_AFTER_CLAIM_S)
    print(json.dumps(claimed))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
