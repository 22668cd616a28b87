"""What daily budgets add to a worker's claim: the median time of one `Worker.claim()` when
nothing can be claimed (an idle worker polls this every second), without budgets, with
budgets not reached, and with a reached budget holding N queued tasks; over a day's ledger
of M charges.

    uv run python bench/budget.py [--charges 5000] [--waiting 200] [--rounds 200] [--pg URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text
from sqlmodel import SQLModel

from executor.config.schema import Config, RepoConfig
from executor.runner.worker import Worker
from storage.db import make_engine, transaction
from storage.lifecycle import State
from storage.models import Charge, utcnow
from storage.tasks import create_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--charges", type=int, default=5000)
    parser.add_argument("--waiting", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--pg", help="a PostgreSQL URL (its tables are emptied) instead of SQLite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(args.pg or f"sqlite:///{tmp}/bench.db")
        if args.pg:
            with engine.begin() as conn:
                tables = ", ".join(t.name for t in SQLModel.metadata.sorted_tables)
                conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        repos = {name: RepoConfig(path=Path(tmp)) for name in ("api", "web", "docs")}
        now = utcnow()
        with transaction(engine) as s:
            task = create_task(s, repo="api", prompt="spent", requester="bench")
            assert task.id is not None
            task.state = State.MERGED
            for i in range(args.charges):
                at = now - timedelta(seconds=i % 3600)
                repo = ("api", "web", "docs")[i % 3]
                s.add(Charge(task_id=task.id, repo=repo, model="m", cost_nanos=1000, at=at))
        runs = {
            "no budgets, queue empty": ({}, 0),
            "budgets not reached, queue empty": ({"daily_usd": 1000}, 0),
            f"budget reached, {args.waiting} tasks waiting": (
                {"daily_usd": 0.000001},
                args.waiting,
            ),
        }
        for label, (budgets, waiting) in runs.items():
            with transaction(engine) as s:
                for _ in range(waiting):
                    create_task(s, repo="api", prompt="waits", requester="bench")
            config = Config.model_validate({"repos": repos, "budgets": budgets})
            worker = Worker(engine, config, Path(tmp), None, None, "bench/0", "bench")  # type: ignore[arg-type]
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                assert worker.claim() is None
                times.append((time.perf_counter() - start) * 1000)
            print(
                f"{label:<40} median {statistics.median(times):.2f} ms  p95 "
                f"{sorted(times)[int(len(times) * 0.95)]:.2f} ms"
            )
        engine.dispose()


if __name__ == "__main__":
    main()
