"""The task page and the review queue over real HTTP: what a reviewer sees, and the attacks
on it (forged, altered, expired and borrowed links; an agent that writes HTML and script into
everything it controls; secrets in its output)."""

from __future__ import annotations

import re
import time
import uuid
from html import unescape
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from sqlalchemy import Engine

from bot import review
from bot.links import Signer, ensure_secret, secret_mode_ok, secret_path
from bot.web.app import serve_web
from storage.db import transaction
from storage.tasks import record
from tests.web_fixtures import DIFF, Web, big_diff, parked

SCRIPT = "<script>alert(document.cookie)</script>"


def text_of(html: str) -> str:
    """What a reader sees: tags dropped, entities decoded."""
    return unescape(re.sub(r"<[^>]+>", "", html))


def test_the_page_shows_the_diff_proof_commit_checks_and_log(engine: Engine, web: Web) -> None:
    turn = {
        "content": "reading calc.py",
        "calls": [
            {
                "tool": "bash",
                "arguments": '{"command": "python3 -m unittest"}',
                "output": "exit code 0\nOK",
            }
        ],
    }
    task_id = parked(engine, turns=[turn])
    page = httpx.get(web.task(task_id))
    assert page.status_code == 200
    shown = text_of(page.text)
    assert "fix add() in calc.py" in shown and "awaiting approval" in shown
    # The diff: added lines as rows of their own, numbered, highlighted by Pygments.
    added = re.findall(r'<tr class="add"[^>]*>(.*?)</tr>', page.text)
    assert [text_of(row) for row in added] == ["2+    return a + b", "3+# checked by the tests"]
    assert '<span class="k">return</span>' in page.text  # Python, highlighted
    # The commit the checks ran on, every check with its output, the turn's command.
    assert "c0ffee" + "0" * 34 in shown and "python3 -m unittest" in shown
    assert "Ran 1 test" in shown and "reading calc.py" in shown
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"


def fragment(web: Web, task_id: int, index: int, event: str, link_of: int | None = None) -> str:
    """The URL of file `index`'s highlighted rows, signed with the link of task `link_of`."""
    query = urlsplit(web.task(link_of or task_id)).query
    return f"{web.url}/t/{task_id}/file/{index}?{query}&d={event}"


def test_a_big_diff_comes_plain_first_and_each_file_highlighted_on_request(
    engine: Engine, web: Web
) -> None:
    """Past ~200 lines the page does not wait for Pygments: later files come escaped and
    numbered, marked for the page's script, which fetches each one's highlighted rows."""
    # A diff of its own per run: what a process highlighted once it shows highlighted.
    last = f"return '{uuid.uuid4().hex}'"
    task_id = parked(engine, diff=big_diff(12, 60, last=last))
    page = httpx.get(web.task(task_id))
    assert page.status_code == 200
    pending = re.findall(r'data-hl="(\d+)"', page.text)
    assert pending and pending[-1] == "11" and "0" not in pending  # the first file inline
    # Plain but whole: every added line is a numbered row, the last file's too.
    added = re.findall(r'<tr class="add"[^>]*>(.*?)</tr>', page.text)
    assert len(added) == 12 * 60 and text_of(added[-1]) == f"60+{last}"
    # The page's one script (with the response's nonce) fetches them.
    nonce = re.search(r"'nonce-([^']+)'", page.headers["content-security-policy"])
    assert nonce is not None
    assert re.findall(r"<script[^>]*>", page.text) == [f'<script nonce="{nonce[1]}">']
    event = re.search(r"d = (\d+);", page.text)[1]  # type: ignore[index]
    rows = httpx.get(fragment(web, task_id, 11, event))
    assert rows.status_code == 200 and rows.headers["cache-control"] == "no-store"
    assert '<span class="k">return</span>' in rows.text and 'id="f11-n60"' in rows.text
    assert "script-src 'none'" in rows.headers["content-security-policy"]
    # Highlighted once, it is shown highlighted inline from then on.
    again = httpx.get(web.task(task_id)).text
    assert '"11"' not in re.findall(r'data-hl="(\d+)"', again)
    assert httpx.get(fragment(web, task_id, 99, event)).status_code == 404


def test_a_diff_fragment_opens_only_with_its_own_tasks_link_and_diff(
    engine: Engine, web: Web
) -> None:
    secret = parked(engine, diff=big_diff(12, 60, last="PAYROLL_KEY = 1"))
    mine = parked(engine, diff=big_diff(12, 60))
    event = re.search(r"d = (\d+);", httpx.get(web.task(secret)).text)[1]  # type: ignore[index]
    assert httpx.get(fragment(web, secret, 11, event)).status_code == 200
    # Another task's link pointed at it: 403, no rows.
    borrowed = httpx.get(fragment(web, secret, 11, event, link_of=mine))
    assert borrowed.status_code == 403 and "PAYROLL" not in borrowed.text
    # My own link naming the other task's diff event: 404, no rows.
    crossed = httpx.get(fragment(web, mine, 11, event))
    assert crossed.status_code == 404 and "PAYROLL" not in crossed.text
    # An altered or expired link: 403.
    good = fragment(web, secret, 11, event)
    altered = re.sub(r"s=([0-9a-f])", lambda m: "s=" + ("0" if m[1] != "0" else "1"), good)
    stale = Signer(web.signer.secret, web.url, ttl_s=1)
    expired_query = urlsplit(stale.task_url(secret, "U111", now=time.time() - 60)).query
    expired = f"{web.url}/t/{secret}/file/11?{expired_query}&d={event}"
    for link in (altered, expired, good.replace(f"d={event}", "d=x")):
        answer = httpx.get(link)
        assert answer.status_code in (403, 404) and "PAYROLL" not in answer.text
    assert httpx.get(altered).status_code == 403 and httpx.get(expired).status_code == 403


def test_an_agents_markup_in_a_big_diff_stays_text_plain_and_highlighted(
    engine: Engine, web: Web
) -> None:
    evil = f"x = '</td></tr></table>{SCRIPT}<img src=x onerror=alert(1)>{uuid.uuid4().hex}'"
    task_id = parked(engine, diff=big_diff(12, 60, last=evil))
    page = httpx.get(web.task(task_id)).text
    assert "<img" not in page and page.count("<script") == 1  # ours only
    assert evil in text_of(page)
    event = re.search(r"d = (\d+);", page)[1]  # type: ignore[index]
    rows = httpx.get(fragment(web, task_id, 11, event)).text
    assert "<img" not in rows and "<script" not in rows and "</table>" not in rows[:-8]
    assert evil in text_of(rows)


def test_the_interdiff_since_approval_is_shown_apart(engine: Engine, web: Web) -> None:
    since = {
        "approved": "a" * 40,
        "commit": "b" * 40,
        "diff_stat": " calc.py | 1 +",
        "diff": (
            "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n"
            "@@ -3,0 +4 @@\n+# a nudge later\n"
        ),
    }
    task_id = parked(engine, since_approval=since)
    page = httpx.get(web.task(task_id)).text
    assert "Changed since the approved aaaaaaaaaaaa" in text_of(page)
    interdiff = page.split('id="interdiff"', 1)[1].split('id="diff"', 1)[0]
    assert "# a nudge later" in text_of(interdiff)


@pytest.mark.parametrize(
    "how", ["forged", "altered_task", "altered_expiry", "expired", "other_key", "missing"]
)
def test_a_link_that_does_not_verify_gets_403_and_no_task_data(
    engine: Engine, web: Web, how: str
) -> None:
    secret_task = parked(engine, prompt="rotate the payroll keys", summary="secret summary")
    other = parked(engine, prompt="another task")
    good = web.task(other)
    query = dict(parse_qsl(urlsplit(good).query))
    path = f"/t/{secret_task}"
    if how == "forged":
        query["s"] = "0" * 64
        path = f"/t/{secret_task}"
    elif how == "altered_task":
        pass  # the link of another task, pointed at this one
    elif how == "altered_expiry":
        query = dict(parse_qsl(urlsplit(web.task(secret_task)).query))
        query["e"] = str(int(query["e"]) + 86400 * 365)
    elif how == "expired":
        stale = Signer(web.signer.secret, web.url, ttl_s=1)
        query = dict(
            parse_qsl(urlsplit(stale.task_url(secret_task, "U111", now=time.time() - 60)).query)
        )
    elif how == "other_key":
        query = dict(parse_qsl(urlsplit(Signer(b"x" * 64).task_url(secret_task, "U111")).query))
    else:
        query = {}
    for suffix in ("", "/poll"):
        answer = httpx.get(f"{web.url}{path}{suffix}?{urlencode(query)}")
        assert answer.status_code == 403
        assert "payroll" not in answer.text and "secret summary" not in answer.text
        assert "calc.py" not in answer.text and f"Task {secret_task}" not in answer.text
    # A task's link opens that task only, and never the review queue.
    assert httpx.get(f"{web.url}/review?{urlsplit(good).query}").status_code == 403
    assert httpx.get(good).status_code == 200


def test_pages_are_read_only(engine: Engine, web: Web) -> None:
    task_id = parked(engine)
    assert httpx.post(web.task(task_id), data={"approve": "1"}).status_code == 405


def test_an_agent_writing_html_and_script_everywhere_stays_text(engine: Engine, web: Web) -> None:
    """A hostile agent puts markup in its summary, its file names, its diff, its thoughts,
    its commands and their output, and a review finding; the page shows all of it as text
    and runs none of it."""
    evil_name = f'x"><img src=x onerror=alert(1)>{SCRIPT}.py'
    diff = (
        f"diff --git a/{evil_name} b/{evil_name}\n--- a/{evil_name}\n+++ b/{evil_name}\n"
        f"@@ -0,0 +1,2 @@\n+{SCRIPT}\n+x = '</td></tr></table>{SCRIPT}'\n"
    )
    turn = {
        "content": f"thinking {SCRIPT}",
        "calls": [{"tool": f"bash{SCRIPT}", "arguments": SCRIPT, "output": f"{SCRIPT} done"}],
    }
    finding = {"file": evil_name, "line": 1, "message": f"look {SCRIPT}"}
    task_id = parked(
        engine,
        prompt=f"fix {SCRIPT}",
        summary=f"done {SCRIPT}",
        diff=diff,
        turns=[turn],
        files=[evil_name],
        review={"verdict": "approve", "summary": SCRIPT, "findings": [finding]},
        risk={"level": "high", "reasons": [f"touches {evil_name}"]},
    )
    page = httpx.get(web.task(task_id))
    html = page.text
    # Our one script (live updates are off for a parked task): none at all here.
    assert "<script" not in html.lower().replace("&lt;script", "")
    assert "<img" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert SCRIPT in text_of(html)  # shown, as text
    csp = page.headers["content-security-policy"]
    assert "script-src 'none'" in csp and "default-src 'none'" in csp
    # The finding still links to its line, by our own anchor, not the agent's text.
    assert 'href="#f0-n1"' in html


def test_a_running_page_has_only_our_script_with_a_nonce(engine: Engine, web: Web) -> None:
    from storage.lifecycle import State
    from storage.queue import claim_next
    from storage.tasks import create_task, transition

    with transaction(engine) as session:
        create_task(session, repo="api", prompt=f"go {SCRIPT}", requester="U111", channel="C1")
    with transaction(engine) as session:
        task = claim_next(session, "w1")
        assert task is not None and task.id is not None
        transition(session, task.id, State.RUNNING, actor="w1")
        record(session, task.id, "turn", {"turn": 1, "content": SCRIPT, "calls": []})
    page = httpx.get(web.task(task.id))
    scripts = re.findall(r"<script[^>]*>", page.text)
    nonce = re.search(r"'nonce-([^']+)'", page.headers["content-security-policy"])
    assert nonce is not None and scripts == [f'<script nonce="{nonce[1]}">']
    # The poll answers new log entries as escaped HTML.
    with transaction(engine) as session:
        record(session, task.id, "turn", {"turn": 2, "content": f"second {SCRIPT}", "calls": []})
    last = int(re.search(r"var last = (\d+)", page.text)[1])  # type: ignore[index]
    poll = httpx.get(web.task(task.id).replace("?", "/poll?") + f"&after={last}").json()
    assert "second &lt;script&gt;" in poll["html"] and "<script" not in poll["html"]
    assert poll["state"] == "running" and poll["live"] is True


def test_the_page_never_shows_credentials_in_urls(engine: Engine, web: Web) -> None:
    leak = "https://deploy:ghp_SeCrEtToKeN@github.com/acme/api.git"
    turn = {
        "content": f"pushing to {leak}",
        "calls": [{"tool": "bash", "arguments": leak, "output": f"fatal: {leak}"}],
    }
    task_id = parked(engine, turns=[turn])
    page = httpx.get(web.task(task_id)).text
    assert "ghp_SeCrEtToKeN" not in page and "github.com/acme/api.git" in page


def test_the_review_page_lists_the_queue_riskiest_first(engine: Engine, web: Web) -> None:
    low = parked(engine, prompt="typo")
    high = parked(
        engine,
        prompt="new column",
        files=["storage/migrations/versions/0012_x.py"],
        insertions=380,
        deletions=32,
        risk={"level": "high", "reasons": []},
        review={
            "verdict": "approve",
            "summary": "",
            "findings": [{"message": "a"}, {"message": "b"}],
        },
        rounds=2,
    )
    page = httpx.get(web.review())
    assert page.status_code == 200
    order = [int(n) for n in re.findall(r'data-task="(\d+)"', page.text)]
    assert order == [high, low]
    reasons = text_of(page.text)
    assert "touches storage/migrations/" in reasons and "412 lines changed" in reasons
    assert "review left 2 findings" in reasons and "took 2 revision rounds" in reasons
    # Each entry links to its task's page, signed for the same person.
    first = re.search(r'href="(/t/\d+\?[^"]+)"', page.text)
    assert first is not None and httpx.get(web.url + unescape(first[1])).status_code == 200


def test_ranking_puts_what_can_break_things_unseen_first(engine: Engine) -> None:
    from storage.models import Task

    def task(n: int) -> Task:
        return Task(id=n, repo="api", prompt="p", requester="U1")

    ok_check = [{"passed": True}]
    entries = review.rank(
        [
            (
                task(1),
                {
                    "checks": ok_check,
                    "review": {"verdict": "approve"},
                    "insertions": 30,
                    "risk": {"level": "low"},
                },
            ),
            (
                task(2),
                {
                    "checks": [{"passed": False}],
                    "review": {"verdict": "approve"},
                    "risk": {"level": "high"},
                },
            ),
            (
                task(3),
                {
                    "checks": ok_check,
                    "review": {"verdict": "approve"},
                    "since_approval": {"diff": "x"},
                    "risk": {"level": "low"},
                },
            ),
            (task(4), {}),
        ]
    )
    assert [e.task.id for e in entries] == [2, 4, 3, 1]
    assert entries[0].reasons[0] == "checks failing"
    assert entries[1].why == "no proof pack recorded"
    assert entries[3].why == "30 lines changed"


def test_the_link_secret_is_private_and_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = ensure_secret(tmp_path)
    assert secret_mode_ok(tmp_path) and ensure_secret(tmp_path) == first
    assert oct(secret_path(tmp_path).stat().st_mode & 0o777) == "0o600"
    assert DIFF  # the shared sample stays importable for the browser tests


def test_an_agent_printing_its_environment_shows_no_key_on_the_page(engine: Engine) -> None:
    """A hostile agent runs `env` and echoes what it finds: the values of the installation's
    secrets (its model key, an `agent_env` variable) and tokens of known formats are blanked."""
    key, agent_token = "local-model-key-0123456789", "a9f3c1d2e8b7"
    printed = (
        f"OPENAI_API_KEY={key}\nDEPLOY_TOKEN={agent_token}\n"
        "SLACK=xoxb-1111-2222-AbCdEfGhIjKl\nGH=ghp_abcdefghijklmnopqrstuvwxyz0123\nPATH=/usr/bin"
    )
    turn = {
        "content": f"my key is {key}",
        "calls": [{"tool": "bash", "arguments": "env", "output": printed}],
    }
    task_id = parked(engine, turns=[turn], summary=f"used {agent_token}")
    signer = Signer(b"s" * 64)
    with serve_web(engine, signer, port=0, secrets=[key, agent_token, None, "short"]) as base:
        page = httpx.get(Signer(signer.secret, base).task_url(task_id, "U1")).text
    for secret in (key, agent_token, "xoxb-1111", "ghp_abcdef"):
        assert secret not in page
    assert "PATH=/usr/bin" in page and "OPENAI_API_KEY=***" in page
