"""The thread beside a task at work: renews the worker's claim, and turns a cancel request,
a lost claim or an executor shutdown into a killed sandbox, so even a long command stops
within seconds. The work itself asks `check()` at every safe point."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session

from executor.agents.loop import Cancelled
from executor.config.defaults import WATCH_INTERVAL_S
from executor.sandbox.container import Sandbox
from storage.db import transaction
from storage.queue import heartbeat

log = logging.getLogger(__name__)


class Interrupted(Cancelled):
    """Not a person's cancel: the claim was lost, or the executor is shutting down."""


class Watch(threading.Thread):
    def __init__(
        self,
        engine: Engine,
        worker_id: str,
        task_id: int,
        shutdown: threading.Event,
        *,
        heartbeat_timeout_s: float,
    ) -> None:
        super().__init__(daemon=True, name=f"watch-{task_id}")
        self.engine, self.worker_id, self.task_id = engine, worker_id, task_id
        self.shutdown = shutdown
        # Several beats per timeout: a short timeout must not reap a live task on a busy host.
        self.interval_s = min(WATCH_INTERVAL_S, heartbeat_timeout_s / 4)
        self.cancelled_by: str | None = None
        self.lost = False
        self._sandbox: Sandbox | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beaten = time.monotonic()  # the last beat, the watch's or the work's (check)

    def attach(self, sandbox: Sandbox | None) -> None:
        """The sandbox to kill on cancel; None while a kill must not interrupt (hand-back)."""
        with self._lock:
            self._sandbox = sandbox

    def run(self) -> None:
        # A beat the work did itself (check) counts: the claim is as fresh, cancels as read.
        while not self._stop.wait(max(0.0, self._beaten + self.interval_s - time.monotonic())):
            if time.monotonic() - self._beaten < self.interval_s:
                continue
            try:
                self.beat()
            except Exception:  # a database blip must not end the heartbeats for good
                log.exception("watch of task %s: heartbeat failed; trying again", self.task_id)

    def beat(self, then: Callable[[Session], object] | None = None) -> None:
        """Renew the claim; `then`: more to write in the same transaction if the work goes on
        (not lost, cancelled or shutting down)."""
        self._beaten = time.monotonic()
        with transaction(self.engine) as s:
            task = heartbeat(s, self.task_id, self.worker_id)
            if task is None:
                self.lost = True
            elif task.cancel_requested_at is not None:
                self.cancelled_by = task.cancel_requested_by or "someone"
            if then is not None and not self._stopping:
                then(s)
        if self._stopping:
            with self._lock:
                if self._sandbox is not None:
                    self._sandbox.kill()

    @property
    def _stopping(self) -> bool:
        return self.lost or self.cancelled_by is not None or self.shutdown.is_set()

    def check(self, *, beat: bool = True, then: Callable[[Session], object] | None = None) -> None:
        """At a safe point: raise Cancelled (or Interrupted) if the work must stop. `beat`
        False reads only what the watch's own beats found (often, cheaply: no query). `then`
        (with a beat): what the work does next in the database, in the beat's transaction."""
        if beat:
            self.beat(then)
        if self.lost:
            raise Interrupted("the worker lost its claim on the task")
        if self.cancelled_by:
            raise Cancelled(f"cancelled by {self.cancelled_by}")
        if self.shutdown.is_set():
            raise Interrupted("the executor is shutting down")

    def stop(self) -> None:
        self._stop.set()
