"""`nightcrew bot` serves the task pages itself, in Socket Mode and in HTTP mode, and its
cards' Open buttons link to them at NIGHTCREW_PUBLIC_URL."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from bot.links import Signer, ensure_secret
from storage.db import make_engine, transaction
from storage.plan_draft import PlanDraft
from storage.plans import create_plan, refresh_card
from tests.slack_emulator import SlackEmulator
from tests.slack_fixtures import start_bot
from tests.test_planner import FOUR
from tests.web_fixtures import parked

PUBLIC = "https://review.example.test/nightcrew"


@pytest.mark.parametrize("mode", [[], ["--http", "--port", "0"]], ids=["socket", "http"])
def test_nightcrew_bot_serves_the_pages_and_the_card_links_them(
    tmp_path: Path, git_repo: Path, monkeypatch: pytest.MonkeyPatch, mode: list[str]
) -> None:
    (tmp_path / "nightcrew.yaml").write_text(
        f"repos:\n  api:\n    path: {git_repo}\nchannels:\n  C111: api\n"
    )
    home = tmp_path / "home"
    monkeypatch.setenv("NIGHTCREW_PUBLIC_URL", PUBLIC)
    with SlackEmulator() as slack:
        proc = start_bot(slack, home, tmp_path / "nightcrew.yaml", *mode)
        try:
            assert proc.stdout is not None
            lines = []
            for line in proc.stdout:
                lines.append(line)
                if line.startswith("pages: "):
                    break
            found = re.match(r"pages: (http://127\.0\.0\.1:\d+); links point at (\S+)", lines[-1])
            assert found is not None, "".join(lines)
            local, public = found[1], found[2]
            assert public == PUBLIC
            engine = make_engine(f"sqlite:///{home / 'nightcrew.db'}")
            task_id = parked(engine, prompt="serve the pages")
            card = slack.wait_until(
                lambda: [m for m in slack.messages("C111") if "Open" in str(m.buttons)],
                timeout=20,
                what="the card with its Open button",
            )[0]
            (button,) = [b for b in card.buttons if b.get("url")]
            assert button["url"].startswith(f"{PUBLIC}/t/{task_id}?")
            page = httpx.get(button["url"].replace(PUBLIC, local))
            assert page.status_code == 200 and "serve the pages" in page.text
            # The secret the bot signs with is the one under its home, made on first use.
            mine = Signer(ensure_secret(home), local).task_url(task_id, "U111")
            assert httpx.get(mine).status_code == 200
            assert httpx.get(mine.replace("s=", "s=0")).status_code == 403
            # A plan's card has an Open button too: to the plan's page with its graph.
            with transaction(engine) as session:
                plan = create_plan(
                    session,
                    repo="api",
                    spec="pages for plans",
                    draft=PlanDraft.model_validate(FOUR),
                    requester="U111",
                    channel="C111",
                )
                refresh_card(session, plan)
            plan_card = slack.wait_until(
                lambda: [m for m in slack.messages("C111") if "Plan 1" in m.all_text],
                timeout=20,
                what="the plan card",
            )[0]
            (opener,) = [b for b in plan_card.buttons if b.get("url")]
            assert opener["url"].startswith(f"{PUBLIC}/p/{plan.id}?")
            plan_page = httpx.get(opener["url"].replace(PUBLIC, local))
            assert plan_page.status_code == 200 and 'id="graph"' in plan_page.text
            engine.dispose()
        finally:
            proc.terminate()
            proc.wait(10)
