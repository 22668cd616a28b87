"""The pages in a real browser at a phone's width (390 px): headless Chromium from Debian
(`apt-get install chromium`) driven by Playwright, never Playwright's own browser download.
Without /usr/bin/chromium these skip on a laptop and fail in CI.

They also take the screenshots the README shows (docs/phone-task.png, docs/phone-review.png)."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import Engine

from storage.db import transaction
from storage.lifecycle import State
from storage.queue import claim_next
from storage.tasks import create_task, record, transition
from tests.conftest import need
from tests.web_fixtures import Web, big_diff, parked

CHROMIUM = Path("/usr/bin/chromium")
DOCS = Path(__file__).parent.parent / "docs"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():  # in CI this fails the tests, never skips them
        need("chromium", "apt-get install -y chromium (the browser tests drive it)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def phone(browser: object) -> Iterator[object]:
    context = browser.new_context(  # type: ignore[attr-defined]
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    yield page
    context.close()


def no_horizontal_scroll(page: object) -> None:
    width = page.evaluate(  # type: ignore[attr-defined]
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth,"
        " document.body.scrollWidth]"
    )
    assert width[0] <= width[1] and width[2] <= width[1], width


LONG_LINE = "x = " + "'a very long line that must scroll inside its own block' + " * 8 + "''"
DIFF = (
    "diff --git a/app/server.py b/app/server.py\nindex 1..2 100644\n--- a/app/server.py\n"
    "+++ b/app/server.py\n@@ -1,4 +1,7 @@\n import os\n-def serve(port):\n"
    '+def serve(port: int = 8080) -> None:\n+    """Serve until stopped."""\n'
    f"+    {LONG_LINE}\n     os.environ.get('HOST')\n-    return None\n+    return None  # done\n"
    "diff --git a/storage/migrations/versions/0012_pages.py"
    " b/storage/migrations/versions/0012_pages.py\n"
    "new file mode 100644\n--- /dev/null\n+++ b/storage/migrations/versions/0012_pages.py\n"
    '@@ -0,0 +1,3 @@\n+revision = "0012"\n+down_revision = "0009"\n+# adds nothing\n'
)


def test_a_task_page_on_a_phone_highlighted_and_without_sideways_scrolling(
    engine: Engine, web: Web, phone: object
) -> None:
    turns = [
        {
            "content": "The handler needs a default port; reading server.py first.",
            "calls": [
                {
                    "tool": "bash",
                    "arguments": '{"command": "python3 -m pytest -q"}',
                    "output": "....\n4 passed in 0.12s",
                }
            ],
        }
    ]
    task_id = parked(
        engine,
        prompt="Give serve() a default port and document it",
        summary="serve() takes a default port (8080) and says what it does",
        diff=DIFF,
        turns=turns,
        files=["app/server.py", "storage/migrations/versions/0012_pages.py"],
        insertions=7,
        deletions=2,
        review={
            "verdict": "approve",
            "summary": "Small and tested; one naming nit.",
            "findings": [{"file": "app/server.py", "line": 2, "message": "name the constant"}],
        },
        risk={"level": "medium", "reasons": ["touches storage/migrations/versions/0012_pages.py"]},
    )
    page = phone
    answer = page.goto(web.task(task_id))  # type: ignore[attr-defined]
    assert answer.status == 200
    # Highlighted by Pygments: the keyword `def` has its own colour, the added row its own.
    keyword = page.locator("tr.add span.k").first  # type: ignore[attr-defined]
    assert keyword.inner_text() == "def"
    colour = keyword.evaluate("e => getComputedStyle(e).color")
    plain = page.locator("tr.add td").nth(2).evaluate("e => getComputedStyle(e).color")  # type: ignore[attr-defined]
    assert colour != plain
    added = page.locator("tr.add").first.evaluate("e => getComputedStyle(e).backgroundColor")  # type: ignore[attr-defined]
    assert added not in ("rgba(0, 0, 0, 0)", "transparent")
    no_horizontal_scroll(page)
    # The long line scrolls inside its own block, not the page.
    block = page.locator(".diff").first  # type: ignore[attr-defined]
    inner = block.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert inner[0] > inner[1] and inner[1] <= PHONE["width"]
    # Readable without zooming: body text at 16 px.
    size = page.evaluate("getComputedStyle(document.body).fontSize")  # type: ignore[attr-defined]
    assert size == "16px"
    # A finding links to the line it names.
    page.locator("a[href='#f0-n2']").click()  # type: ignore[attr-defined]
    assert page.evaluate("location.hash") == "#f0-n2"  # type: ignore[attr-defined]
    # The screenshot for the README: the review, its finding, and the diff below it.
    page.evaluate(
        "[...document.querySelectorAll('h2')].find(h => h.textContent.startsWith('Review'))"
        ".scrollIntoView()"
    )  # type: ignore[attr-defined]
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "phone-task.png"), full_page=False)  # type: ignore[attr-defined]


def test_a_big_diffs_later_files_get_highlighted_in_the_browser(
    engine: Engine, web: Web, phone: object
) -> None:
    """Past ~200 lines the page comes plain and its script fetches each file's highlighted
    rows; in the browser, the last file ends up highlighted without a reload."""
    task_id = parked(engine, diff=big_diff(12, 60, last=f"return '{uuid.uuid4().hex}'"))
    page = phone
    assert page.goto(web.task(task_id)).status == 200  # type: ignore[attr-defined]
    page.evaluate("window.__same_document = true")  # type: ignore[attr-defined]
    last = page.locator("#f11 tr.add span.k").last  # type: ignore[attr-defined]
    last.wait_for(timeout=10_000)
    assert last.inner_text() == "return"
    assert page.locator("[data-hl]").count() == 0  # type: ignore[attr-defined]
    assert page.evaluate("window.__same_document") is True  # type: ignore[attr-defined]
    no_horizontal_scroll(page)


def test_a_running_task_page_gets_new_turns_without_a_reload(
    engine: Engine, web: Web, phone: object
) -> None:
    with transaction(engine) as session:
        create_task(session, repo="api", prompt="tidy the logs", requester="U111", channel="C1")
    with transaction(engine) as session:
        task = claim_next(session, "w1")
        assert task is not None and task.id is not None
        transition(session, task.id, State.RUNNING, actor="w1")
        record(session, task.id, "turn", {"turn": 1, "content": "first look", "calls": []})
    page = phone
    page.goto(web.task(task.id))  # type: ignore[attr-defined]
    page.evaluate("window.__same_document = true")  # type: ignore[attr-defined]
    assert page.locator("details.turn").count() == 1  # type: ignore[attr-defined]
    with transaction(engine) as session:
        record(session, task.id, "turn", {"turn": 2, "content": "second <b>look</b>", "calls": []})
    page.locator("details.turn").nth(1).wait_for(timeout=10_000)  # type: ignore[attr-defined]
    assert "second <b>look</b>" in page.locator("details.turn").nth(1).inner_text()  # type: ignore[attr-defined]
    assert page.evaluate("window.__same_document") is True  # type: ignore[attr-defined]
    no_horizontal_scroll(page)


def test_an_expired_or_altered_link_gets_403_in_the_browser(
    engine: Engine, web: Web, phone: object
) -> None:
    task_id = parked(engine, prompt="rotate the payroll keys")
    good = web.task(task_id)
    altered = re.sub(r"s=([0-9a-f])", lambda m: "s=" + ("0" if m[1] != "0" else "1"), good)
    expired = web.signer.__class__(web.signer.secret, web.url, 1).task_url(
        task_id, "U111", now=time.time() - 10
    )
    page = phone
    for link in (altered, expired, good.replace(f"/t/{task_id}", f"/t/{task_id + 1}")):
        answer = page.goto(link)  # type: ignore[attr-defined]
        assert answer.status == 403
        assert "payroll" not in page.content()  # type: ignore[attr-defined]
        no_horizontal_scroll(page)


def test_a_plan_page_on_a_phone_with_its_graph(engine: Engine, web: Web, phone: object) -> None:
    """The plan's page at 390 px: the graph fits the screen, every task is listed with its
    state, and a tap on a task opens its page."""
    from storage.plan_draft import PlanDraft
    from storage.plans import create_plan, queue_plan
    from tests.test_planner import FOUR

    with transaction(engine) as s:
        plan = create_plan(
            s, repo="api", spec="subtraction", draft=PlanDraft.model_validate(FOUR), requester="U1"
        )
        assert plan.id is not None
        first, *_ = queue_plan(s, plan.id, actor="U1")
    page = phone
    assert page.goto(web.signer.plan_url(plan.id, "U111")).status == 200  # type: ignore[attr-defined]
    graph = page.locator("#graph")  # type: ignore[attr-defined]
    box = graph.bounding_box()
    assert box is not None and 0 < box["width"] <= PHONE["width"] and box["height"] > 100
    assert page.locator("#graph g.node").count() == 4  # type: ignore[attr-defined]
    assert page.locator("#graph line.edge").count() == 2  # type: ignore[attr-defined]
    states = page.locator("#tasks .badge").all_inner_texts()  # type: ignore[attr-defined]
    assert states.count("waiting") == 2 and states.count("queued") == 2
    no_horizontal_scroll(page)
    page.screenshot(path=str(DOCS / "phone-plan.png"), full_page=True)  # type: ignore[attr-defined]
    page.locator("#tasks a").first.click()  # type: ignore[attr-defined]
    page.wait_for_url(re.compile(rf"/t/{first.id}\?"))  # type: ignore[attr-defined]
    assert "add sub() to calc.py" in page.locator("pre").first.inner_text()  # type: ignore[attr-defined]


def test_the_review_queue_on_a_phone(engine: Engine, web: Web, phone: object) -> None:
    parked(engine, prompt="Fix a typo in the README", insertions=1, deletions=1)
    parked(
        engine,
        prompt="Add a pages table and backfill it",
        files=["storage/migrations/versions/0012_pages.py", "storage/models.py"],
        insertions=380,
        deletions=32,
        review={"verdict": "approve", "summary": "", "findings": [{"message": "a"}] * 2},
        rounds=2,
        risk={"level": "high", "reasons": ["412 lines changed"]},
    )
    parked(
        engine,
        prompt="Retry uploads on 5xx",
        checks=[{"command": "pytest", "passed": False, "exit_code": 1}],
        risk={"level": "high", "reasons": ["checks failing"]},
    )
    page = phone
    assert page.goto(web.review()).status == 200  # type: ignore[attr-defined]
    titles = page.locator(".entry h3 a").all_inner_texts()  # type: ignore[attr-defined]
    assert titles == ["Task 2", "Task 3", "Task 1"]
    no_horizontal_scroll(page)
    page.screenshot(path=str(DOCS / "phone-review.png"), full_page=True)  # type: ignore[attr-defined]
    page.locator(".entry h3 a").first.click()  # type: ignore[attr-defined]
    assert "Add a pages table" in page.locator("pre").first.inner_text()  # type: ignore[attr-defined]
