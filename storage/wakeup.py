"""Waking idle executors when work is queued, instead of leaving it to their next poll.

A transaction that queues work (a task queued, a merge approved or released, a plan to
make) calls `announce`. When it commits:
- PostgreSQL: `NOTIFY nightcrew_queue`, sent inside the transaction (the server delivers it
  at commit, and never for a rolled-back one) to every executor that `LISTEN`s on its own
  connection, on any host;
- SQLite: one byte into each executor's FIFO in `<database>.wake/` beside the database file
  (every process on this machine writing that file can reach it), after the commit.

An executor `listen`s and hands the `Bell` to its workers: an idle worker waits on the bell
for at most its poll interval, so a missed wake (the executor started after the commit, a
notification lost with its connection, a writer that does not announce) costs one poll
interval, never the task. Waking is a hint: the claim in the database decides who works."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import select
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

CHANNEL = "nightcrew_queue"
_FLAG = "nightcrew_announce"  # in Session.info: this transaction queued work
_LISTEN_TICK_S = 0.25  # how often a listener looks at its stop event (and reconnects)
_RECONNECT_S = 2.0  # PostgreSQL: a lost listening connection is made again after this


def announce(session: Session) -> None:
    """Work was queued in `session`'s transaction: wake idle executors when it commits."""
    session.info[_FLAG] = True


@event.listens_for(Session, "before_commit")
def _notify_in_transaction(session: Session) -> None:
    if session.info.get(_FLAG) and _dialect(session) == "postgresql":
        session.connection().exec_driver_sql(f"NOTIFY {CHANNEL}")


@event.listens_for(Session, "after_commit")
def _ring_after_commit(session: Session) -> None:
    if session.info.pop(_FLAG, False) and _dialect(session) == "sqlite":
        folder = wake_folder(session.get_bind().url.database)
        if folder is not None:
            ring_local(folder)


@event.listens_for(Session, "after_rollback")
def _forget(session: Session) -> None:
    session.info.pop(_FLAG, None)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def wake_folder(database: str | None) -> Path | None:
    """Where the executors of a SQLite database file keep their FIFOs; None in memory."""
    if not database or database == ":memory:":
        return None
    path = Path(database)
    return path.with_name(path.name + ".wake")


def ring_local(folder: Path) -> int:
    """One byte into every FIFO in `folder` (never blocking); how many executors were rung.
    A FIFO with no reader is a crashed executor's: removed. Anything else there (a link, a
    plain file) is left alone and gets nothing."""
    try:
        names = os.listdir(folder)
    except OSError:
        return 0  # no executor ever listened here
    rung = 0
    for name in names:
        path = folder / name
        if not name.endswith(".fifo"):
            continue
        try:  # never through a link, and only into a FIFO: no byte lands in anything else
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nobody reads it any more
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue
            os.write(fd, b"\0")
            rung += 1
        except BlockingIOError:
            rung += 1  # full of unread wakes already: it will wake
        except OSError:
            pass
        finally:
            os.close(fd)
    return rung


class Bell:
    """What idle workers wait on. A worker notes `rung` before it looks for work and passes
    it to `wait`, so a ring in between is not lost. One ring (one queued piece of work) wakes
    one waiter: the others would only race it to the same claim; `ring(everyone=True)` wakes
    them all (stopping)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.rung = 0
        self.waiters = 0  # workers waiting now

    def ring(self, *, everyone: bool = False) -> None:
        with self._cond:
            self.rung += 1
            if everyone:
                self._cond.notify_all()
            else:
                self._cond.notify()

    def wait(self, seen: int, timeout: float) -> bool:
        """Wait until woken by a ring after `seen` (at once if one came already) or until
        `timeout`; True if rung."""
        with self._cond:
            if self.rung != seen:
                return True
            self.waiters += 1
            try:
                self._cond.wait(timeout)
            finally:
                self.waiters -= 1
            return self.rung != seen


@contextmanager
def listen(engine: Engine, stop: threading.Event) -> Iterator[Bell]:
    """Ring a `Bell` whenever work is announced on `engine`'s database, until the block
    ends; it rings once more when `stop` is set, so waiting workers see it at once."""
    bell = Bell()
    done = threading.Event()
    if engine.dialect.name == "postgresql":
        target, args = _listen_postgres, (engine, bell, stop, done)
    else:
        folder = wake_folder(engine.url.database)
        if folder is None:  # in memory: one process, nobody else to hear
            yield bell
            return
        target, args = _listen_fifo, (_open_fifo(folder), bell, stop, done)  # type: ignore[assignment]
    thread = threading.Thread(target=target, args=args, name="wakeup", daemon=True)
    thread.start()
    try:
        yield bell
    finally:
        done.set()
        thread.join(timeout=5)
        bell.ring(everyone=True)


def _open_fifo(folder: Path) -> tuple[int, Path]:
    """A FIFO of this process in `folder`, opened before it gets its name there, so no
    writer ever finds it without a reader (and removes it)."""
    folder.mkdir(mode=0o700, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    path, tmp = folder / f"{tag}.fifo", folder / f".{tag}.tmp"
    os.mkfifo(tmp, 0o600)
    fd = os.open(tmp, os.O_RDWR | os.O_NONBLOCK)  # read-write: never EOF, never blocks
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{tmp} is not a FIFO")
    os.rename(tmp, path)
    return fd, path


def _listen_fifo(
    opened: tuple[int, Path], bell: Bell, stop: threading.Event, done: threading.Event
) -> None:
    fd, path = opened
    try:
        while not done.is_set() and not stop.is_set():
            ready, _, _ = select.select([fd], [], [], _LISTEN_TICK_S)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(fd, 4096):
                        pass
                bell.ring()
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        bell.ring(everyone=True)  # stopping: waiting workers look at their stop event now


def _listen_postgres(
    engine: Engine, bell: Bell, stop: threading.Event, done: threading.Event
) -> None:
    import psycopg  # the PostgreSQL driver we ship; imported only where it is used

    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    while not done.is_set() and not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"LISTEN {CHANNEL}")
                bell.ring(everyone=True)  # queued while we were not listening: look now
                while not done.is_set() and not stop.is_set():
                    for _ in conn.notifies(timeout=_LISTEN_TICK_S):
                        bell.ring()
        except psycopg.Error:
            log.warning("listening for queued work failed; polling until it is back", exc_info=True)
            done.wait(_RECONNECT_S)
    bell.ring(everyone=True)  # stopping: waiting workers look at their stop event now
