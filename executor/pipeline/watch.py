"""The thread beside a task at work: renews the worker's claim, and turns a cancel request,
a lost claim or an executor shutdown into a killed sandbox, so even a long command stops
within seconds. The work itself asks `check()` at every safe point."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

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

    def attach(self, sandbox: Sandbox | None) -> None:
        """The sandbox to kill on cancel; None while a kill must not interrupt (hand-back)."""
        with self._lock:
            self._sandbox = sandbox

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # a database blip must not end the heartbeats for good
                log.exception("watch of task %s: heartbeat failed; trying again", self.task_id)

    def beat(self) -> None:
        with transaction(self.engine) as s:
            task = heartbeat(s, self.task_id, self.worker_id)
        if task is None:
            self.lost = True
        elif task.cancel_requested_at is not None:
            self.cancelled_by = task.cancel_requested_by or "someone"
        if self.lost or self.cancelled_by or self.shutdown.is_set():
            with self._lock:
                if self._sandbox is not None:
                    self._sandbox.kill()

    def check(self, *, beat: bool = True) -> None:
        """At a safe point: raise Cancelled (or Interrupted) if the work must stop. `beat`
        False reads only what the watch's own beats found (often, cheaply: no query)."""
        if beat:
            self.beat()
        if self.lost:
            raise Interrupted("the worker lost its claim on the task")
        if self.cancelled_by:
            raise Cancelled(f"cancelled by {self.cancelled_by}")
        if self.shutdown.is_set():
            raise Interrupted("the executor is shutting down")

    def stop(self) -> None:
        self._stop.set()
