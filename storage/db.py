"""Engine and transactions: SQLite (embedded default) or PostgreSQL, chosen by URL."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlmodel import Session

from storage.defaults import SQLITE_BUSY_TIMEOUT_S
from storage.migrate import upgrade


def sqlite_url(home: Path) -> str:
    return f"sqlite:///{(home / 'nightcrew.db').resolve()}"


def normalize_url(url: str) -> str:
    """Accept the usual `postgres://` / `postgresql://` spellings; we ship psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


_READ_ONLY = "nightcrew_read_only"


def make_engine(url: str, *, create: bool = True, autocheckpoint: bool = True) -> Engine:
    """An engine for `url`; with `create`, the schema is created or migrated to the newest
    revision (storage.migrate). `autocheckpoint=False` (SQLite): commits never copy the WAL
    into the database (which ends in an fsync); some other process must call `checkpoint()`
    (the Slack bot's HTTP workers: the bot)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = _sqlite_engine(url, autocheckpoint=autocheckpoint)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    if create:
        upgrade(engine)
    return engine


def _sqlite_engine(url: str, *, autocheckpoint: bool) -> Engine:
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so we can BEGIN IMMEDIATE below.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses no commit
        if not autocheckpoint:
            cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Take the write lock up front: a deferred transaction that reads and then writes
        # fails with SQLITE_BUSY at once when another writer got in between, whatever
        # the busy timeout. IMMEDIATE waits its turn instead. A `reading()` transaction
        # never writes: it begins deferred and does not wait for the writers at all.
        if conn.get_execution_options().get(_READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """A transaction that only reads (health probes, metrics scrapes): on SQLite it does not
    queue for the write lock (WAL readers see the last commit), so a long write cannot time
    out a health check."""
    with engine.connect() as conn:
        conn.execution_options(**{_READ_ONLY: True})
        with Session(bind=conn) as session:
            yield session


def checkpoint(engine: Engine) -> tuple[int, int] | None:
    """Copy SQLite's WAL into the database file, PASSIVE: it neither waits for nor blocks
    writers, so its fsync stays off their path. (frames in the WAL, frames copied); None on
    other databases."""
    if engine.dialect.name != "sqlite":
        return None
    raw = engine.raw_connection()  # autocommit (see _on_connect): no BEGIN IMMEDIATE here
    try:
        cur = raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
        _busy, frames, copied = cur.fetchone()
    finally:
        raw.close()
    return frames, copied


_LOCK_FILES: dict[tuple[int, str], tuple[threading.Lock, int]] = {}
_LOCK_FILES_GUARD = threading.Lock()


@contextmanager
def writer_turn(engine: Engine) -> Iterator[None]:
    """On a SQLite file, one writer at a time across threads and processes, by a lock in the
    process and a kernel file lock beside the database: a waiter wakes the moment the lock is
    free, where SQLite's busy handler sleeps in growing steps (1, 2, 5, 10 … 100 ms). Several
    bot processes writing acks at once would otherwise get that tail. Elsewhere (PostgreSQL,
    memory) it does nothing."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    # One descriptor per process (flock is per open file, so one inherited over fork() would
    # not exclude), and a thread lock with it (threads share the descriptor).
    key = (os.getpid(), path)
    with _LOCK_FILES_GUARD:
        if key not in _LOCK_FILES:
            fd = os.open(f"{path}.write-lock", os.O_RDWR | os.O_CREAT, 0o600)
            _LOCK_FILES[key] = (threading.Lock(), fd)
        in_process, fd = _LOCK_FILES[key]
    with in_process:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
