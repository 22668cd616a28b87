"""The Slack emulator speaks Slack's protocol well enough for the real `slack_sdk` and
`slack_bolt` clients: Web API over HTTP, Socket Mode over a websocket, signed HTTP mode."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from slack_bolt import Ack, App, Respond
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import RateLimitErrorRetryHandler
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.signature import SignatureVerifier
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.slack_emulator import (
    BOT_USER_ID,
    SlackEmulator,
    block_action,
    encode,
    sign,
    slash_command,
    url_verification,
    view_submission,
)
from tests.slack_samples import load_json, load_text, sample_path

CANCEL = {"type": "plain_text", "text": "Cancel"}
CARD = [
    {"type": "section", "text": {"type": "mrkdwn", "text": "*fix the tests*\nstate: queued"}},
    {
        "type": "actions",
        "block_id": "task-1",
        "elements": [{"type": "button", "action_id": "cancel", "value": "1", "text": CANCEL}],
    },
]


@pytest.fixture
def slack() -> Iterator[SlackEmulator]:
    with SlackEmulator() as emulator:
        yield emulator


@pytest.fixture
def client(slack: SlackEmulator) -> WebClient:
    return WebClient(token=slack.bot_token, base_url=slack.api_url)


def test_samples_load_by_name_and_a_wrong_name_is_a_clear_error() -> None:
    assert load_json("socket_hello.json")["type"] == "hello"
    assert "command=%2Fhello-world" in load_text("slash_command.txt")
    with pytest.raises(FileNotFoundError, match=r"no Slack sample 'nope.json'.*socket_hello"):
        sample_path("nope.json")


# -- Web API ---------------------------------------------------------------------------------


def test_a_message_is_posted_updated_and_read_back(slack: SlackEmulator, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="C1", text="fix the tests", blocks=CARD)
    assert posted["channel"] == "C1" and posted["message"]["bot_id"] == slack.bot_id
    ts = posted["ts"]
    assert ts.split(".")[1].isdigit() and len(ts.split(".")[1]) == 6
    client.chat_update(channel="C1", ts=ts, text="fix the tests: running")
    client.chat_postMessage(channel="C1", thread_ts=ts, text="started")
    client.reactions_add(channel="C1", timestamp=ts, name="eyes")
    with pytest.raises(SlackApiError) as err:
        client.reactions_add(channel="C1", timestamp=ts, name="eyes")
    assert err.value.response["error"] == "already_reacted"

    card, reply = slack.thread("C1", ts)
    assert card.text == "fix the tests: running" and card.blocks == CARD  # update kept blocks
    assert card.edits == 1 and card.action_ids == ["cancel"]
    assert card.reactions == {"eyes": [slack.bot_user_id]}
    assert reply.is_reply and reply.text == "started"
    assert [m.ts for m in slack.messages("C1")] == [ts, reply.ts]
    replies = client.conversations_replies(channel="C1", ts=ts)["messages"]
    assert [m["text"] for m in replies] == ["fix the tests: running", "started"]
    assert replies[0]["reply_count"] == 1 and replies[1]["parent_user_id"] == slack.bot_user_id
    assert [c.method for c in slack.calls()] == [
        "chat.postMessage",
        "chat.update",
        "chat.postMessage",
        "reactions.add",
        "reactions.add",
        "conversations.replies",
    ]


def test_form_json_and_query_bodies_are_all_read(slack: SlackEmulator) -> None:
    api = slack.api_url
    form = {"token": slack.bot_token, "channel": "C1", "blocks": json.dumps(CARD)}
    assert httpx.post(api + "chat.postMessage", data=form).json()["ok"]
    bearer = {"Authorization": f"Bearer {slack.bot_token}"}
    assert httpx.post(
        api + "chat.postMessage", json={"channel": "C1", "text": "x"}, headers=bearer
    ).json()["ok"]
    assert httpx.get(api + "users.info?user=U42", headers=bearer).json()["user"]["id"] == "U42"
    assert slack.calls("chat.postMessage")[0].params["blocks"] == CARD
    assert httpx.post(api + "no.such", headers=bearer).json()["error"] == "unknown_method"
    assert httpx.post(api + "auth.test").json() == {"ok": False, "error": "not_authed"}


def test_bad_tokens_are_refused(slack: SlackEmulator) -> None:
    with pytest.raises(SlackApiError) as err:
        WebClient(token="xoxb-wrong", base_url=slack.api_url).chat_postMessage(
            channel="C1", text="x"
        )
    assert err.value.response.status_code == 200 and err.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as err:
        WebClient(token=slack.app_token, base_url=slack.api_url).chat_postMessage(
            channel="C1", text="x"
        )
    assert err.value.response["error"] == "not_allowed_token_type"
    assert slack.messages() == []


def test_rate_limit_is_retried_after_retry_after_and_the_message_arrives_once(
    slack: SlackEmulator,
) -> None:
    client = WebClient(
        token=slack.bot_token, base_url=slack.api_url, retry_handlers=[RateLimitErrorRetryHandler()]
    )
    slack.fail("chat.postMessage", status=429, retry_after=1)
    started = time.monotonic()
    client.chat_postMessage(channel="C1", text="hello")
    assert time.monotonic() - started >= 1.0
    first, second = slack.calls("chat.postMessage")
    assert (first.status, first.error, second.status) == (429, "ratelimited", 200)
    assert second.at - first.at >= 1.0
    assert [m.text for m in slack.messages("C1")] == ["hello"]


def test_transient_server_errors_are_retried_by_the_sdk_handler(slack: SlackEmulator) -> None:
    quick = FixedValueRetryIntervalCalculator(fixed_internal=0.05)
    handler = ServerErrorRetryHandler(max_retry_count=2, interval_calculator=quick)
    client = WebClient(token=slack.bot_token, base_url=slack.api_url, retry_handlers=[handler])
    slack.fail("chat.postMessage", status=503)
    slack.fail("chat.postMessage", status=500)
    client.chat_postMessage(channel="C1", text="hello")
    assert [c.status for c in slack.calls()] == [503, 500, 200]
    assert len(slack.messages("C1")) == 1


def test_an_answer_lost_after_the_post_makes_the_default_client_post_twice(
    slack: SlackEmulator, client: WebClient
) -> None:
    """WebClient's default ConnectionErrorRetryHandler resends a post whose answer was lost:
    at-least-once, so the notifier must not rely on it for exactly-once delivery."""
    slack.fail("chat.postMessage", drop=True, applied=True)
    client.chat_postMessage(channel="C1", text="hello")
    assert [c.status for c in slack.calls()] == [0, 200]
    assert [m.text for m in slack.messages("C1")] == ["hello", "hello"]


def test_metadata_is_kept_and_returned_only_when_asked_for(
    slack: SlackEmulator, client: WebClient
) -> None:
    meta = {"event_type": "task_created", "event_payload": {"id": 7, "tags": ["a"]}}
    root = client.chat_postMessage(channel="C1", text="card", metadata=meta)
    assert root["message"]["metadata"] == meta
    reply = client.chat_postMessage(channel="C1", text="step", thread_ts=root["ts"], metadata=meta)
    plain = client.conversations_history(channel="C1")["messages"]
    assert [m["text"] for m in plain] == ["card"] and "metadata" not in plain[0]  # no replies
    full = client.conversations_history(channel="C1", include_all_metadata=True)["messages"]
    assert full[0]["metadata"] == meta
    thread = client.conversations_replies(channel="C1", ts=root["ts"], include_all_metadata=True)
    assert [(m["ts"], m["metadata"]) for m in thread["messages"]] == [
        (root["ts"], meta),
        (reply["ts"], meta),
    ]
    no_meta = client.conversations_replies(channel="C1", ts=root["ts"])["messages"]
    assert all("metadata" not in m for m in no_meta)
    for bad in (
        {"event_type": "x"},
        {"event_payload": {}},
        {"event_type": "", "event_payload": {}},
    ):
        with pytest.raises(SlackApiError) as err:
            client.chat_postMessage(channel="C1", text="x", metadata=bad)
        assert err.value.response["error"] == "invalid_metadata_format"


def test_history_pages_newest_first_within_oldest(slack: SlackEmulator, client: WebClient) -> None:
    posted = [client.chat_postMessage(channel="C1", text=f"m{i}")["ts"] for i in range(5)]
    client.chat_postMessage(channel="C2", text="elsewhere")
    seen, cursor = [], None
    while True:
        page = client.conversations_history(channel="C1", limit=2, cursor=cursor)
        seen += [m["ts"] for m in page["messages"]]
        cursor = page["response_metadata"]["next_cursor"]
        assert page["has_more"] == bool(cursor)
        if not cursor:
            break
    assert seen == posted[::-1]
    later = client.conversations_history(channel="C1", oldest=posted[2])["messages"]
    assert [m["ts"] for m in later] == posted[:2:-1]


def test_a_held_answer_comes_after_the_call_took_effect(
    slack: SlackEmulator, client: WebClient
) -> None:
    release = slack.hold("chat.postMessage")
    answer: list[Any] = []
    sender = threading.Thread(
        target=lambda: answer.append(client.chat_postMessage(channel="C1", text="hi"))
    )
    sender.start()
    slack.wait_until(lambda: slack.messages("C1"), what="the post to take effect")
    time.sleep(0.2)  # the held call blocks by design: no signal says "still held" but time
    assert answer == []  # Slack has it; the app does not know yet
    release.set()
    sender.join(5)
    assert answer[0]["ts"] == slack.messages("C1")[0].ts


def test_permanent_errors_are_ok_false_answers(slack: SlackEmulator, client: WebClient) -> None:
    slack.channel_error("C404")
    slack.fail("chat.update", error="not_in_channel")
    long_title = {"type": "modal", "title": {"type": "plain_text", "text": "x" * 25}}
    answers = []
    for call in [
        lambda: client.chat_postMessage(channel="C404", text="x"),
        lambda: client.chat_update(channel="C1", ts="1.000001", text="x"),
        lambda: client.chat_update(channel="C1", ts="1.000001", text="x"),
        lambda: client.chat_postMessage(channel="C1", text="x", blocks=CARD * 26),
        lambda: client.views_open(trigger_id="1.2.x", view=long_title),
    ]:
        with pytest.raises(SlackApiError) as err:
            call()
        answers.append(err.value.response)
    assert [a["error"] for a in answers] == [
        "channel_not_found",
        "not_in_channel",
        "message_not_found",
        "invalid_blocks",
        "invalid_arguments",
    ]
    assert "no more than 50 items allowed" in answers[3]["response_metadata"]["messages"][0]
    assert all(a.status_code == 200 for a in answers)


def test_views_home_ephemerals_and_users(slack: SlackEmulator, client: WebClient) -> None:
    modal = {
        "type": "modal",
        "callback_id": "nudge",
        "title": {"type": "plain_text", "text": "Nudge"},
    }
    view_id = client.views_open(trigger_id="1.2.x", view=modal)["view"]["id"]
    client.views_publish(user_id="U1", view={"type": "home", "blocks": CARD})
    client.chat_postEphemeral(channel="C1", user="U1", text="unknown repo `x`: try `/agent repos`")
    slack.add_user("U1", real_name="Ada Lovelace", tz="Europe/London")
    user = client.users_info(user="U1")["user"]

    assert slack.opened_views()[0]["id"] == view_id and slack.home("U1")["blocks"] == CARD
    assert "try `/agent repos`" in slack.ephemerals("U1")[0].all_text
    assert (user["real_name"], user["tz"], user["profile"]["team"]) == (
        "Ada Lovelace",
        "Europe/London",
        "T111",
    )


# -- payload builders ------------------------------------------------------------------------


def test_builders_keep_the_samples_shape(slack: SlackEmulator, client: WebClient) -> None:
    command = slash_command("add fix the tests", user_id="U1", channel_id="C1")
    assert command.keys() == load_json("socket_slash_commands.json")["payload"].keys()
    assert (command["command"], command["text"], command["user_id"]) == (
        "/agent",
        "add fix the tests",
        "U1",
    )

    ts = client.chat_postMessage(channel="C1", text="card", blocks=CARD)["ts"]
    click = block_action(
        "cancel", user="U2", message=slack.message("C1", ts).to_api(), channel="C1"
    )
    assert click.keys() == load_json("block_actions.json").keys()
    assert click["actions"][0] | {"action_ts": "-"} == {
        "action_id": "cancel",
        "block_id": "task-1",
        "text": CANCEL,
        "value": "1",
        "type": "button",
        "action_ts": "-",
    }
    assert (click["container"]["message_ts"], click["user"]["id"]) == (ts, "U2")

    modal = {
        "type": "modal",
        "callback_id": "changes",
        "private_metadata": "task=1",
        "title": {"type": "plain_text", "text": "Request changes"},
    }
    opened = client.views_open(trigger_id=click["trigger_id"], view=modal)["view"]
    submitted = view_submission(values={"b": {"a": "use pathlib"}}, user="U2", view=opened)
    assert submitted["view"]["id"] == opened["id"] and submitted["view"]["callback_id"] == "changes"
    assert submitted["view"]["state"]["values"]["b"]["a"]["value"] == "use pathlib"

    (mention,) = [
        e
        for e in slack.post_as_user("C1", "U2", f"<@{BOT_USER_ID}> also docs", thread_ts=ts)
        if e["event"]["type"] == "app_mention"
    ]
    reply = slack.post_as_user("C1", "U2", "and the README", thread_ts=ts)[0]["event"]
    assert mention["event"]["thread_ts"] == ts and reply["parent_user_id"] == slack.bot_user_id
    thread = client.conversations_replies(channel="C1", ts=ts)["messages"]
    assert [m["text"] for m in thread] == ["card", f"<@{BOT_USER_ID}> also docs", "and the README"]


# -- Socket Mode -----------------------------------------------------------------------------


def agent_app(slack: SlackEmulator, **app_args: Any) -> App:
    """A tiny bolt app: `/agent` acks at once, posts a card and answers by response_url."""
    app = App(client=WebClient(token=slack.bot_token, base_url=slack.api_url), **app_args)

    @app.command("/agent")
    def agent(ack: Ack, command: dict[str, str], client: WebClient, respond: Respond) -> None:
        ack(f"queued: {command['text']}")
        client.chat_postMessage(channel=command["channel_id"], text=command["text"], blocks=CARD)
        respond("card posted")

    return app


@contextmanager
def socket_mode(app: App, slack: SlackEmulator) -> Iterator[SocketModeHandler]:
    handler = SocketModeHandler(app, slack.app_token)
    handler.connect()
    try:
        yield handler
    finally:
        # Closing from Slack's side first spares the builtin client's 3 s receive timeout.
        handler.client.auto_reconnect_enabled = False
        slack.close_connections()
        # As bot/slack/run.py does: slack_sdk's builtin client races its receiver thread when
        # both ends close at once (its sock becomes None between the check and close()).
        with contextlib.suppress(AttributeError):
            handler.close()


def test_bolt_over_socket_mode_acks_a_slash_command_and_posts(slack: SlackEmulator) -> None:
    app = agent_app(slack)
    assert [c.method for c in slack.calls()] == ["auth.test"]  # bolt checks its token at once
    with socket_mode(app, slack):
        slack.wait_connected()
        envelope = slack.send_envelope("slash_commands", slash_command("add fix the tests"))
        assert envelope.ack.payload == {"text": "queued: add fix the tests"}
        assert envelope.ack_latency < 1.0
        card = slack.wait_until(lambda: slack.messages("C111"), what="the card")[0]
        assert card.text == "add fix the tests" and card.action_ids == ["cancel"]
        response = slack.wait_until(slack.responses, what="the response_url post")[0]
        assert response.body["text"] == "card posted" and response.url.startswith(slack.http_url)
    assert slack.calls("apps.connections.open")[0].token == slack.app_token
    assert slack.connections()[0].frames == []  # nothing but the one ack


def test_a_disconnect_frame_makes_the_app_reconnect(slack: SlackEmulator) -> None:
    with socket_mode(agent_app(slack), slack):
        first = slack.wait_connected()
        slack.send_disconnect(reason="refresh_requested")
        second = slack.wait_connected(total=2)
        assert second.id != first.id
        # The builtin client reads the new socket only once the old one is closed, which
        # takes up to its 3 s receive timeout: envelopes sent sooner are acked that late.
        slack.wait_until(lambda: not slack.connections()[0].open, what="the old socket closed")
        envelope = slack.send_envelope("slash_commands", slash_command("list"))
        assert envelope.connection_id == second.id
    assert len(slack.calls("apps.connections.open")) == 2


def test_a_socket_needs_a_fresh_ticket_and_can_be_closed_by_slack(slack: SlackEmulator) -> None:
    opened = httpx.post(slack.api_url + "apps.connections.open", data={"token": slack.app_token})
    url = opened.json()["url"]
    with pytest.raises(InvalidStatus, match="401"):
        connect(url.split("?")[0]).close()
    with connect(url) as ws:
        assert json.loads(ws.recv(timeout=2))["type"] == "hello"
        slack.close_connections()
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=2)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    with pytest.raises(InvalidStatus, match="401"):  # a ticket is good once
        connect(url).close()


# -- HTTP mode -------------------------------------------------------------------------------


def test_signing_matches_slacks_test_vector() -> None:
    vector = load_json("signature_test_vector.json")
    body = load_text(vector["body_file"])
    assert sign(vector["signing_secret"], vector["timestamp"], body) == vector["valid_signature"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_http(app: App) -> Iterator[str]:
    server: WSGIServer = make_server(
        "127.0.0.1", 0, SlackRequestHandler(app), handler_class=_QuietHandler
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/slack/events"
    finally:
        server.shutdown()
        server.server_close()


def test_bolt_over_http_accepts_signed_requests_and_refuses_forged_and_stale(
    slack: SlackEmulator,
) -> None:
    app = agent_app(slack, signing_secret=slack.signing_secret)
    retries: list[str | None] = []

    @app.event("app_mention")
    def mention(ack: Ack, request: Any) -> None:
        ack()
        retries.append(request.headers.get("x-slack-retry-num", [None])[0])

    @app.action("cancel")
    def cancel(ack: Ack) -> None:
        ack()

    with serve_http(app) as url:
        command = slash_command("add fix the tests")
        ok = slack.post_to_app(url, command)
        assert (ok.status, ok.text) == (200, "queued: add fix the tests")
        assert slack.post_to_app(url, command, forge=True).status == 401
        assert slack.post_to_app(url, command, stale=True).status == 401
        (event,) = [
            e
            for e in slack.post_as_user("C1", "U2", f"<@{BOT_USER_ID}> hi")
            if e["event"]["type"] == "app_mention"
        ]
        assert slack.post_to_app(url, event).status == 200
        assert slack.post_to_app(url, event, retry_num=1).status == 200
        assert slack.post_to_app(url, block_action("cancel", "1")).status == 200
        assert slack.post_to_app(url, url_verification("c-123")).json() == {"challenge": "c-123"}
        # Bolt parses the body before it checks the signature: malformed JSON raises in
        # BoltRequest() and the server answers 500. The bot must guard this itself.
        broken = slack.post_to_app(url, body="{not json", content_type="application/json")
        assert broken.status == 500
    assert retries == [None, "1"]
    assert len(slack.messages("C111")) == 1  # forged and stale commands did nothing


def test_encoding_and_signature_are_what_the_sdk_verifier_accepts(slack: SlackEmulator) -> None:
    verifier = SignatureVerifier(slack.signing_secret)
    for payload in [
        slash_command("x"),
        block_action("a", "v"),
        load_json("event_app_mention.json"),
    ]:
        ctype, body = encode(payload)
        ts = str(int(time.time()))
        headers = {
            "x-slack-request-timestamp": ts,
            "x-slack-signature": sign(slack.signing_secret, ts, body),
        }
        assert verifier.is_valid_request(body, headers), ctype
    assert encode(block_action("a"))[1].startswith("payload=%7B")
