"""A plan's web page (`/p/<id>`) over real HTTP: its tasks with their states and signed links
to their pages, the dependency graph, and the attacks on it (a task's link pointed at a plan
and the other way round, altered and expired links, planner text with markup)."""

from __future__ import annotations

import re
import time
from html import unescape
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from sqlalchemy import Engine

from bot.links import Signer
from storage.db import transaction
from storage.plan_draft import PlanDraft
from storage.plans import create_plan, queue_plan
from tests.test_planner import FOUR
from tests.web_fixtures import Web, parked

SCRIPT = "<script>alert(document.cookie)</script>"


def text_of(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", "", html))


def a_plan(engine: Engine, draft: dict = FOUR, *, queue: bool = True) -> tuple[int, list[int]]:
    with transaction(engine) as s:
        plan = create_plan(
            s, repo="api", spec="subtraction", draft=PlanDraft.model_validate(draft), requester="U1"
        )
        assert plan.id is not None
        tasks = queue_plan(s, plan.id, actor="U1") if queue else []
        return plan.id, [t.id or 0 for t in tasks]


def plan_url(web: Web, plan_id: int, user: str = "U111") -> str:
    return web.signer.plan_url(plan_id, user)


def test_the_plan_page_shows_its_tasks_their_states_links_and_the_graph(
    engine: Engine, web: Web
) -> None:
    plan_id, (one, two, three, four) = a_plan(engine)
    page = httpx.get(plan_url(web, plan_id))
    assert page.status_code == 200
    shown = text_of(page.text)
    assert f"Plan {plan_id}" in shown and "add subtraction" in shown and "queued" in shown
    # Each task, its state, what it waits for, its paths.
    items = re.findall(r'<li class="entry" data-key="(\d+)">(.*?)</li>', page.text, re.S)
    assert [int(k) for k, _ in items] == [one, two, three, four]
    third = text_of(items[2][1])
    assert "waiting" in third and f"after #{one}" in third and "test_sub.py" in third
    assert "needs nothing first" in text_of(items[0][1])
    # The graph: a box per task, an arrow per "after" edge, the dependents a row below.
    boxes = dict(re.findall(r'data-key="(\d+)">\s*<rect x="[\d.]+" y="([\d.]+)"', page.text))
    assert len(boxes) == 4 and page.text.count('<line class="edge"') == 2
    assert boxes[str(one)] == boxes[str(two)] < boxes[str(three)] == boxes[str(four)]
    # Each task's link opens that task's page, and expires with the plan's link.
    links = re.findall(r'<a href="(/t/(\d+)\?[^"]+)">Task', page.text)
    assert [int(t) for _, t in links] == [one, two, three, four]
    plan_expiry = dict(parse_qsl(urlsplit(plan_url(web, plan_id)).query))["e"]
    for href, _ in links:
        href = unescape(href)
        assert dict(parse_qsl(urlsplit(href).query))["e"] <= plan_expiry
        assert httpx.get(web.url + href).status_code == 200


def test_a_proposed_plan_shows_its_proposal_and_graph(engine: Engine, web: Web) -> None:
    plan_id, _ = a_plan(engine, queue=False)
    page = httpx.get(plan_url(web, plan_id))
    assert page.status_code == 200 and "proposed" in text_of(page.text)
    assert page.text.count('<line class="edge"') == 2 and "/t/" not in page.text
    assert "after 1" in text_of(page.text)


def test_a_task_page_link_ends_no_later_than_the_plan_link_that_gave_it(
    engine: Engine, web: Web
) -> None:
    plan_id, _ = a_plan(engine)
    short = Signer(web.signer.secret, web.url, ttl_s=60)
    page = httpx.get(short.plan_url(plan_id, "U111"))
    href = unescape(re.search(r'<a href="(/t/\d+\?[^"]+)">Task', page.text)[1])  # type: ignore[index]
    expires = int(dict(parse_qsl(urlsplit(href).query))["e"])
    assert expires <= time.time() + 61


@pytest.mark.parametrize("how", ["task_link", "altered", "expired", "other_plan", "forged"])
def test_a_link_that_is_not_this_plans_gets_403_and_no_plan_data(
    engine: Engine, web: Web, how: str
) -> None:
    secret_draft = {
        "title": "rotate the payroll keys",
        "tasks": [{"prompt": "payroll rotation", "allowed_paths": ["keys/**"]}],
    }
    plan_id, (task_id,) = a_plan(engine, secret_draft)
    other_plan, _ = a_plan(engine)
    good = plan_url(web, plan_id)
    if how == "task_link":  # a task's link (same id) pointed at the plan
        bad = f"{web.url}/p/{plan_id}?{urlsplit(web.task(task_id)).query}"
    elif how == "altered":
        query = dict(parse_qsl(urlsplit(good).query))
        bad = good.replace(f"e={query['e']}", f"e={int(query['e']) + 86400 * 365}")
    elif how == "expired":
        stale = Signer(web.signer.secret, web.url, ttl_s=1)
        bad = stale.plan_url(plan_id, "U111", now=time.time() - 60)
    elif how == "other_plan":
        bad = f"{web.url}/p/{plan_id}?{urlsplit(plan_url(web, other_plan)).query}"
    else:
        bad = Signer(b"x" * 64, web.url).plan_url(plan_id, "U111")
    answer = httpx.get(bad)
    assert answer.status_code == 403
    assert "payroll" not in answer.text and "keys/" not in answer.text
    assert httpx.get(good).status_code == 200


def test_a_plans_link_opens_no_task_and_no_review_queue(engine: Engine, web: Web) -> None:
    plan_id, (task_id, *_) = a_plan(engine)
    query = urlsplit(plan_url(web, plan_id)).query
    # The plan's id equals a task's id here; its link still opens only the plan.
    assert task_id == plan_id
    for path in (f"/t/{task_id}", f"/t/{task_id}/poll", "/review"):
        assert httpx.get(f"{web.url}{path}?{query}").status_code == 403


def test_planner_text_with_markup_stays_text_on_the_plan_page(engine: Engine, web: Web) -> None:
    evil = {
        "title": f"t {SCRIPT}",
        "tasks": [
            {
                "prompt": f"p {SCRIPT}",
                "allowed_paths": [f'x"><img src=x onerror=alert(1)>{SCRIPT}'],
            },
            {
                "prompt": "second </text></svg><script>x()</script>",
                "allowed_paths": ["b"],
                "after": [1],
            },
        ],
    }
    for queue in (False, True):
        plan_id, _ = a_plan(engine, evil, queue=queue)
        page = httpx.get(plan_url(web, plan_id))
        html = page.text
        assert "<script" not in html and "<img" not in html and "</svg><script" not in html
        assert SCRIPT in text_of(html)
        assert "script-src 'none'" in page.headers["content-security-policy"]


def test_a_plan_page_for_a_missing_plan_is_404_with_a_good_link(engine: Engine, web: Web) -> None:
    parked(engine)
    assert httpx.get(plan_url(web, 99)).status_code == 404
