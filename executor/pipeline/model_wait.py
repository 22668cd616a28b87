"""A task waiting for the model: what people see while its model call waits out an outage.
The client (`executor/agents/llm.py`) decides when to wait and for how long; this writes the
wait on the task (its card, `nightcrew ls` and `show`) and lets a cancel or a shutdown end it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from executor.agents.llm import ModelWait
from executor.pipeline.watch import Watch
from storage import outbox
from storage.db import transaction
from storage.models import Task, utcnow
from storage.tasks import record

log = logging.getLogger(__name__)


@dataclass
class ShowModelWait:
    """The `WaitListener` of one task's model calls."""

    engine: Engine
    task_id: int
    worker_id: str
    watch: Watch

    def waiting(self, wait: ModelWait) -> None:
        text = (
            f"{wait.failure}; trying again until {wait.until:%H:%M} UTC, then it waits for a"
            " person with its work kept"
        )
        payload = {
            "failure": wait.failure,
            "since": wait.since.isoformat(timespec="seconds"),
            "until": wait.until.isoformat(timespec="seconds"),
        }
        self._write("model_waiting", payload, since=wait, text=text)

    def check(self) -> None:
        self.watch.check(beat=False)  # the watch beats on its own every few seconds

    def over(self, answered: bool) -> None:
        # Given up: the task's next state says why (and clears the wait with it).
        if answered:
            self._write("model_back", {}, since=None, text=None)

    def _write(
        self, kind: str, payload: dict[str, Any], *, since: ModelWait | None, text: str | None
    ) -> None:
        """One transaction: the task's wait fields, the event, a card edit. A database blip
        must not end the wait (the wait is for the model, not for the database): logged."""
        try:
            with transaction(self.engine) as s:
                task = s.get(Task, self.task_id)
                if task is None or task.worker_id != self.worker_id:
                    return  # the task is not ours any more: nothing of it to show
                if since is None and task.model_wait_since is not None:
                    waited = (utcnow() - task.model_wait_since).total_seconds()
                    payload = {"waited_s": round(waited)}
                task.model_wait_since = since.since if since else None
                task.model_wait = text
                record(s, self.task_id, kind, payload)
                outbox.refresh_card(s, task, every_s=0)
        except Exception:
            log.exception("task %s: could not record %s", self.task_id, kind)
