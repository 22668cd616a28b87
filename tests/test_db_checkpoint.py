"""SQLite's WAL checkpoints (each ends in an fsync) can be kept off a process's commits and
done by another process: the Slack HTTP workers' acks never wait for the disk that way."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import func, select

from storage.db import checkpoint, make_engine, transaction
from storage.models import Task
from storage.tasks import create_task

PAGE, FRAME_HEADER, WAL_HEADER = 4096, 24, 32


def _wal_frames(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return (wal.stat().st_size - WAL_HEADER) // (FRAME_HEADER + PAGE)


def test_an_engine_without_autocheckpoint_leaves_the_wal_to_checkpoint(tmp_path: Path) -> None:
    db = tmp_path / "nightcrew.db"
    owner = make_engine(f"sqlite:///{db}")  # creates the schema; checkpoints as usual
    worker = make_engine(f"sqlite:///{db}", create=False, autocheckpoint=False)
    for i in range(300):
        with transaction(worker) as session:
            create_task(session, repo="api", prompt=f"task {i} " + "x" * 5000, requester="U1")
    # Past SQLite's 1,000-frame autocheckpoint, and the WAL was never started over.
    assert _wal_frames(db) > 1000
    assert checkpoint(owner) == (_wal_frames(db), _wal_frames(db))  # all of it, by the owner
    with transaction(owner) as session:
        assert session.exec(select(func.count()).select_from(Task)).one() == 300
    owner.dispose()
    worker.dispose()


def test_checkpoints_are_kept_by_default(tmp_path: Path) -> None:
    db = tmp_path / "nightcrew.db"
    engine = make_engine(f"sqlite:///{db}")
    for i in range(300):
        with transaction(engine) as session:
            create_task(session, repo="api", prompt=f"task {i} " + "x" * 5000, requester="U1")
    assert _wal_frames(db) < 1100  # started over after each autocheckpoint
    engine.dispose()
