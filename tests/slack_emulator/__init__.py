"""A local Slack for tests: the Web API over real HTTP and Socket Mode over a real websocket,
speaking Slack's protocol (shapes from tests/slack_samples/), so the real `slack_sdk` and
`slack_bolt` clients run against it unchanged.

    with SlackEmulator() as slack:                       # tokens xoxb-test and xapp-test
        app = App(client=WebClient(token=slack.bot_token, base_url=slack.api_url))
        ...                                              # register listeners
        handler = SocketModeHandler(app, slack.app_token)
        handler.connect()                                # apps.connections.open, then the websocket
        envelope = slack.send_envelope("slash_commands", slash_command("add fix the tests"))
        assert envelope.ack_latency < 0.1
        card = slack.wait_until(lambda: slack.messages("C111"))[0]
        assert "fix the tests" in card.all_text and "approve" in card.action_ids

Pieces: `SlackEmulator` (emulator.py: state, faults, waiting), the method implementations
(workspace.py, with Block Kit limits in blocks.py), the transports (web_api.py,
socket_mode.py), Slack's side of HTTP mode (http_mode.py: signing and posting to the app),
and payload builders from the real samples (payloads.py)."""

from tests.slack_emulator.emulator import SlackEmulator
from tests.slack_emulator.http_mode import AppResponse, encode, post_to_app, sign
from tests.slack_emulator.model import Call, Ephemeral, Message, ResponsePost
from tests.slack_emulator.payloads import (
    APP_ID,
    BOT_ID,
    BOT_USER_ID,
    TEAM_ID,
    app_mention,
    block_action,
    channel_message,
    envelope_type,
    new_ts,
    slash_command,
    thread_reply,
    url_verification,
    view_submission,
)
from tests.slack_emulator.socket_mode import Ack, Envelope, SocketConnection

__all__ = [
    "APP_ID",
    "BOT_ID",
    "BOT_USER_ID",
    "TEAM_ID",
    "Ack",
    "AppResponse",
    "Call",
    "Envelope",
    "Ephemeral",
    "Message",
    "ResponsePost",
    "SlackEmulator",
    "SocketConnection",
    "app_mention",
    "block_action",
    "channel_message",
    "encode",
    "envelope_type",
    "new_ts",
    "post_to_app",
    "sign",
    "slash_command",
    "thread_reply",
    "url_verification",
    "view_submission",
]
