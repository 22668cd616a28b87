"""Time to build the digest (query + Block Kit) over N tasks of one day, in every state.

    uv run python bench/digest.py [--tasks 10000] [--runs 15] [--postgres ADMIN_URL]

Fills a fresh database (SQLite by default; with `--postgres`, a new database on that server,
dropped afterwards) with a proof pack for each task awaiting approval, then times
`storage.digests.collect` + `bot.slack.digest.render` over the day, and
`bot.slack.digest_send.send_due` (claim the run, build, queue it in the outbox) once. Goal: under
200 ms for 10,000 tasks."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, insert, text

from bot.slack import digest_send as digest
from bot.slack.digest import render
from executor.config.schema import Config, Digest, RepoConfig
from storage.db import make_engine, normalize_url, transaction
from storage.digests import collect
from storage.lifecycle import CLOSED, State
from storage.models import Charge, Task, TaskEvent

UNTIL = datetime(2026, 11, 23, 8, tzinfo=UTC)
SINCE = UNTIL - timedelta(days=1)


def fill(engine, n: int) -> None:
    rng = random.Random(7)
    states = list(State)
    rows, proofs, charges = [], [], []
    for i in range(1, n + 1):
        state = rng.choice(states)
        at = SINCE + timedelta(seconds=rng.uniform(-86400, 86400))  # half in the window
        rows.append(
            {
                "id": i,
                "repo": rng.choice(["api", "web", "infra"]),
                "prompt": f"task {i}: " + "make the thing work properly " * rng.randint(1, 40),
                "state": state,
                "priority": 1,
                "requester": f"U{rng.randint(1, 20):03d}",
                "source": "slack",
                "channel": "C111",
                "reason": "checks failed three times" if state is State.FAILED else None,
                "created_at": at - timedelta(hours=1),
                "updated_at": at,
                "finished_at": at if state in CLOSED or state is State.FAILED else None,
                "attempts": 1,
                "turns": rng.randint(1, 60),
                "tokens_in": rng.randint(1000, 500_000),
                "tokens_out": rng.randint(100, 50_000),
                "cost_nanos": rng.randint(10_000_000, 3_000_000_000),
            }
        )
        for k in range(min(rows[-1]["turns"], 10)):  # the ledger: a model call each
            charges.append(
                {
                    "task_id": i,
                    "repo": rows[-1]["repo"],
                    "model": "gpt-4.1-mini",
                    "tokens_in": 5000,
                    "tokens_out": 400,
                    "cost_nanos": None if k == 9 else 2_640_000,
                    "at": at - timedelta(minutes=k),
                }
            )
        if state is State.AWAITING_APPROVAL:
            level = rng.choice(["low", "medium", "high"])
            proofs.append(
                {
                    "task_id": i,
                    "kind": "proof",
                    "payload": {
                        "files": ["a.py", "b.py"],
                        "insertions": 40,
                        "deletions": 7,
                        "diff_stat": " a.py | 30 +++\n b.py | 17 ++-",
                        "checks": [{"command": "pytest", "passed": level != "high"}],
                        "review": {"verdict": "approve", "summary": "fine"},
                        "risk": {"level": level, "reasons": [f"{level} risk"]},
                    },
                    "created_at": UNTIL,
                }
            )
    with transaction(engine) as session:
        session.execute(insert(Task), rows)
        session.execute(insert(TaskEvent), proofs)
        session.execute(insert(Charge), charges)


@contextmanager
def database(postgres: str | None) -> Iterator[str]:
    """A URL of an empty database: an SQLite file, or a new PostgreSQL database."""
    if postgres is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    admin = create_engine(normalize_url(postgres), isolation_level="AUTOCOMMIT")
    name = f"nightcrew_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield normalize_url(postgres).rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--postgres", default=None, help="admin URL of a PostgreSQL server")
    args = parser.parse_args()
    with database(args.postgres) as url:
        engine = make_engine(url)
        fill(engine, args.tasks)
        tz = ZoneInfo("Europe/Berlin")
        times, blocks = [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            with transaction(engine) as session:
                data = collect(session, SINCE, UNTIL)
            _, blocks = render(data, tz=tz)
            times.append((time.perf_counter() - start) * 1000)
        config = Config(
            repos={"api": RepoConfig(path=Path.cwd())},
            digest=Digest(cron="0 8 * * *", timezone="UTC", channels=["C111"]),
        )
        start = time.perf_counter()
        (sent,) = digest.send_due(engine, config, UNTIL + timedelta(seconds=1))
        send_ms = (time.perf_counter() - start) * 1000
        engine.dispose()
    print(f"tasks: {args.tasks:,} ({engine.dialect.name})")
    print(
        f"digest: {len(data.awaiting)} awaiting, {len(data.merged)} merged, "
        f"{len(data.failed)} failed, {len(data.open)} open; {len(blocks)} blocks"
    )
    print(
        f"build (query + blocks): min {min(times):.1f} ms, median {statistics.median(times):.1f}"
        f" ms, max {max(times):.1f} ms over {args.runs} runs (goal < 200 ms)"
    )
    print(f"send_due (claim, build, outbox row): {send_ms:.1f} ms for {sent.target}")


if __name__ == "__main__":
    main()
