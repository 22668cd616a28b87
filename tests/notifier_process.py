"""Run as its own process: the real notifier against a Slack (the emulator) with short
tunables, until killed. Used by the test that SIGKILLs a notifier mid-post.

    python -m tests.notifier_process <database url> <Web API url> <bot token>"""

from __future__ import annotations

import sys
import threading

from bot.slack.app import SlackEnv, notifier_client
from bot.slack.notifier import Notifier, Tunables
from storage.db import make_engine

TUNABLES = Tunables(
    lease_s=1.0,  # a killed notifier's rows come back after a second
    card_edit_interval_s=0.2,
    channel_interval_s=0.0,
    backoff_base_s=0.1,
    idle_poll_s=0.05,
    reaction_poll_s=0.05,
)


def main(db_url: str, api_url: str, token: str) -> None:
    env = SlackEnv(bot_token=token, api_url=api_url)
    notifier = Notifier(make_engine(db_url, create=False), notifier_client(env), TUNABLES)
    print("notifier running", flush=True)
    notifier.run(threading.Event())


if __name__ == "__main__":
    main(*sys.argv[1:4])
