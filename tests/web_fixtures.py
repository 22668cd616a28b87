"""Fixtures for tests of the web front end (bot/web/): the pages served on a free port over
conftest's `engine`, a signer with a secret of its own, and tasks parked with a diff, a proof
pack and turns, as a worker leaves them.

Registered in the root conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine

from bot.links import Signer
from bot.web.app import serve_web
from storage.db import transaction
from storage.lifecycle import State
from storage.tasks import create_task, record, transition
from tests.claiming import claim

DIFF = """diff --git a/calc.py b/calc.py
index 1111111..2222222 100644
--- a/calc.py
+++ b/calc.py
@@ -1,2 +1,3 @@
 def add(a, b):
-    return a - b
+    return a + b
+# checked by the tests
"""
CHECK = {
    "command": "python3 -m unittest",
    "exit_code": 0,
    "duration_s": 0.4,
    "output_tail": "Ran 1 test\nOK\n",
    "killed_reason": None,
    "passed": True,
}


@dataclass
class Web:
    url: str  # the local base URL
    signer: Signer

    def task(self, task_id: int, user: str = "U111") -> str:
        return self.signer.task_url(task_id, user)

    def review(self, user: str = "U111") -> str:
        return self.signer.review_url(user)


@pytest.fixture
def web(engine: Engine) -> Iterator[Web]:
    signer = Signer(b"test-secret-" * 4)
    with serve_web(engine, signer, port=0) as url:
        yield Web(url, Signer(signer.secret, url, signer.ttl_s))


def parked(
    engine: Engine,
    *,
    prompt: str = "fix add() in calc.py",
    diff: str = DIFF,
    requester: str = "U111",
    repo: str = "api",
    channel: str | None = "C111",
    summary: str = "add() adds",
    turns: list[dict[str, Any]] | None = None,
    **proof: Any,
) -> int:
    """A task at awaiting approval with a `diff` event, a proof pack (`proof` overrides its
    fields) and `turns`, as the pipeline records them."""
    with transaction(engine) as session:
        task = create_task(session, repo=repo, prompt=prompt, requester=requester, channel=channel)
        assert task.id is not None
        task_id = task.id
    assert claim(engine, running=True).id == task_id
    with transaction(engine) as session:
        for n, turn in enumerate(turns or [], 1):
            record(session, task_id, "turn", {"turn": n, **turn})
        commit = "c0ffee" + "0" * 34
        record(session, task_id, "checks", {"commit": commit, "room": "clean", "results": [CHECK]})
        record(session, task_id, "diff", {"commit": commit, "diff": diff, "cut": 0})
        pack = {
            "commit": commit,
            "diff_stat": " calc.py | 3 ++-",
            "files": ["calc.py"],
            "insertions": 2,
            "deletions": 1,
            "checks": [CHECK],
            "review": {"verdict": "approve", "summary": "small and tested", "findings": []},
            "rounds": 0,
            "risk": {"level": "low", "reasons": []},
        }
        pack |= proof
        record(session, task_id, "proof", pack)
        level = (pack.get("risk") or {}).get("level", "unknown")
        transition(
            session,
            task_id,
            State.AWAITING_APPROVAL,
            reason=f"risk {level}",
            actor="w1",
            summary=summary,
        )
    return task_id


def big_diff(files: int = 12, lines: int = 60, *, last: str = "return total") -> str:
    """A Python diff of `files` files of `lines` added lines each: more than a page highlights
    while it renders (bot/web/diffview.py INLINE_LINES), so its last files come plain first.
    The last file's last line is `last`."""
    out = []
    for f in range(files):
        out += [
            f"diff --git a/pkg/mod{f}.py b/pkg/mod{f}.py",
            f"--- a/pkg/mod{f}.py",
            f"+++ b/pkg/mod{f}.py",
            f"@@ -0,0 +1,{lines} @@",
        ]
        out += [f"+def f{i}(x):" if i % 2 == 0 else "+    return x" for i in range(lines - 1)]
        out.append(f"+{last}" if f == files - 1 else "+# end")
    return "\n".join(out) + "\n"
