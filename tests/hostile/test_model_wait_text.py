"""An endpoint's error text is untrusted: while a task waits for a failing model, the card,
`nightcrew show`, `ls`, the executor's log and the database carry the server's words inert
(no ping, no link, no terminal escape), as other untrusted text (test_untrusted_text.py)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import Engine

from bot import actions
from bot.slack.blocks import card
from bot.terminal.render import task_detail, task_table
from storage.db import transaction
from tests.hostile.test_untrusted_text import CONTROL, HOSTILE, PINGS, assert_no_pings, dirty
from tests.hostile.test_untrusted_text import stored_texts as stored
from tests.llm_server import ScriptedLLM, reply, tool_call
from tests.outage_fixtures import Executor
from tests.waiting import wait_for
from tests.worker_fixtures import add_task, task


@dataclass
class HostileOutage:
    """Answer the first turn, then fail everything with a hostile error message."""

    llm: ScriptedLLM

    def serve(self, h: Any, request: dict[str, Any]) -> None:
        self.llm.fail_for(600, 503, message=HOSTILE)
        reply(tool_call("bash", {"command": "true"})).serve(h, request)


def test_a_failing_endpoints_words_are_shown_inert(
    engine: Engine, executor: Callable[..., Executor], caplog: pytest.LogCaptureFixture
) -> None:
    task_id = add_task(engine)
    llm = ScriptedLLM()
    llm.add(HostileOutage(llm))
    with llm:
        ex = executor(llm, backoff=0.5, max_wait=1.0, outage_window=600)
        try:
            waiting = wait_for(
                lambda: task(engine, task_id).model_wait_since and task(engine, task_id),
                60,
                "the task to wait for the model",
            )
            assert waiting.model_wait is not None
            assert PINGS in waiting.model_wait  # the server's words, as they came
            assert not CONTROL.search(waiting.model_wait)
            assert not [row for row in stored(engine) if dirty(row)]
            assert_no_pings(json.dumps(card(waiting)[1]))
            out = io.StringIO()
            console = Console(file=out, width=400, force_terminal=True)  # colours and all
            console.print(task_table([waiting]))
            console.print(task_detail(waiting, [], []))
            shown = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())  # rich's own colours only
            assert "waiting for the model" in shown and "[bold red]loud" in shown
            assert not CONTROL.search(shown), shown
            logged = [r.getMessage() for r in caplog.records if "LLM" in r.getMessage()]
            assert logged and not [m for m in logged if CONTROL.search(m)]
        finally:
            with transaction(engine) as s:
                actions.cancel(s, task_id, actor="U1")
            ex.join(timeout=60)
