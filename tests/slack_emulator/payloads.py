"""What Slack sends to the app, built from the real samples: each builder loads one sample and
overrides only the fields a test cares about, so everything else keeps Slack's real shape.

Each result is the `payload` of a Socket Mode envelope and, as is, the body of an HTTP-mode
request (`http_mode.encode` says how each kind goes over the wire). Defaults match the
emulator's defaults (team T111, app A111, bot user U0BOT01), so an emulator and these builders
agree without being told. `ts`, `event_id` and `trigger_id` are fresh on every call."""

from __future__ import annotations

import copy
import itertools
import secrets
import threading
import time
import uuid
from typing import Any

from tests.slack_samples import load_json

TEAM_ID = "T111"
APP_ID = "A111"
BOT_USER_ID = "U0BOT01"
BOT_ID = "B0BOT01"

INTERACTIVE_TYPES = {
    "block_actions",
    "view_submission",
    "view_closed",
    "shortcut",
    "message_action",
    "block_suggestion",
}

_clock = threading.Lock()
_last_us = 0
_serial = itertools.count(1)


def new_ts() -> str:
    """A message timestamp as Slack writes them ("1700000000.000100"): unique and increasing."""
    global _last_us
    with _clock:
        _last_us = max(int(time.time() * 1_000_000), _last_us + 1)
        return f"{_last_us // 1_000_000}.{_last_us % 1_000_000:06d}"


def new_id(prefix: str) -> str:
    """An ID in Slack's style: prefix + upper-case letters and digits (`Ev06ABC123`, `V0…`)."""
    return f"{prefix}0{next(_serial):03d}{secrets.token_hex(3).upper()}"


def new_trigger_id() -> str:
    return f"{secrets.randbelow(10**12)}.{secrets.randbelow(10**11)}.{secrets.token_hex(16)}"


def envelope_type(payload: dict[str, Any]) -> str:
    """The Socket Mode envelope `type` that carries `payload`."""
    if "command" in payload:
        return "slash_commands"
    if payload.get("type") in ("event_callback", "app_rate_limited"):
        return "events_api"
    if payload.get("type") in INTERACTIVE_TYPES:
        return "interactive"
    raise ValueError(f"not a Socket Mode payload: type={payload.get('type')!r}")


def slash_command(
    text: str = "",
    *,
    command: str = "/agent",
    user_id: str = "U111",
    user_name: str | None = None,
    channel_id: str = "C111",
    channel_name: str | None = None,
    response_url: str | None = None,
    trigger_id: str | None = None,
) -> dict[str, str]:
    """`/agent add fix the tests` typed by `user_id` in `channel_id` (socket_slash_commands.json;
    the same fields arrive form-encoded over HTTP)."""
    payload: dict[str, str] = load_json("socket_slash_commands.json")["payload"]
    payload.update(command=command, text=text, user_id=user_id, channel_id=channel_id)
    payload["trigger_id"] = trigger_id or new_trigger_id()
    _set(payload, user_name=user_name, channel_name=channel_name, response_url=response_url)
    return payload


def app_mention(
    text: str,
    *,
    user: str = "U222",
    channel: str = "C111",
    thread_ts: str | None = None,
    ts: str | None = None,
    bot_user_id: str = BOT_USER_ID,
) -> dict[str, Any]:
    """`@nightcrew <text>` (event_app_mention.json); in a thread when `thread_ts` is given.
    `text` gets the mention in front unless it already holds one (`<@U0BOT01>`)."""
    body = _event_callback("event_app_mention.json", bot_user_id)
    event = body["event"]
    _message_fields(event, user=user, channel=channel, ts=ts, thread_ts=thread_ts)
    mention = f"<@{bot_user_id}>"
    event["text"] = text if mention in text else f"{mention} {text}".rstrip()
    elements: list[dict[str, str]] = []
    for i, piece in enumerate(event["text"].split(mention)):
        if i:
            elements.append({"type": "user", "user_id": bot_user_id})
        if piece:
            elements.append({"type": "text", "text": piece})
    event["blocks"][0]["elements"][0]["elements"] = elements
    return body


def channel_message(
    text: str, *, user: str = "U222", channel: str = "C111", ts: str | None = None
) -> dict[str, Any]:
    """A top-level message in a channel, outside any thread (event_message_channel.json)."""
    body = _event_callback("event_message_channel.json", BOT_USER_ID)
    _message_fields(body["event"], user=user, channel=channel, ts=ts, thread_ts=None)
    body["event"]["text"] = text
    return body


def thread_reply(
    channel: str,
    thread_ts: str,
    user: str,
    text: str,
    *,
    ts: str | None = None,
    parent_user_id: str = BOT_USER_ID,
    bot_id: str | None = None,
) -> dict[str, Any]:
    """A reply in the thread under `thread_ts` (event_message_thread_reply.json). `bot_id`
    makes it a bot's message, as Slack marks them."""
    body = _event_callback("event_message_thread_reply.json", BOT_USER_ID)
    event = body["event"]
    _message_fields(event, user=user, channel=channel, ts=ts, thread_ts=thread_ts)
    event.update(text=text, parent_user_id=parent_user_id)
    if bot_id is not None:
        event["bot_id"] = bot_id
    return body


def thread_broadcast(
    channel: str,
    thread_ts: str,
    user: str,
    text: str,
    *,
    ts: str | None = None,
    root: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A reply sent with "Also send to channel" (event_message_thread_broadcast.json):
    `subtype: thread_broadcast`, the thread's `root` message as Slack includes it."""
    body = _event_callback("event_message_thread_broadcast.json", BOT_USER_ID)
    event = body["event"]
    _message_fields(event, user=user, channel=channel, ts=ts, thread_ts=thread_ts)
    event["text"] = text
    event["root"].update(ts=thread_ts, thread_ts=thread_ts, **(root or {}))
    return body


def file_share(
    channel: str,
    user: str,
    text: str,
    files: list[dict[str, Any]],
    *,
    thread_ts: str | None = None,
    ts: str | None = None,
    parent_user_id: str = BOT_USER_ID,
) -> dict[str, Any]:
    """A message with files (event_message_file_share.json): `subtype: file_share`, the
    file objects as Slack describes them; in a thread, with `thread_ts` and
    `parent_user_id` as a thread reply carries them."""
    body = _event_callback("event_message_file_share.json", BOT_USER_ID)
    event = body["event"]
    _message_fields(event, user=user, channel=channel, ts=ts, thread_ts=thread_ts)
    event.update(text=text, files=copy.deepcopy(files))
    event["blocks"][0]["elements"][0]["elements"] = [{"type": "text", "text": text}]
    if thread_ts is not None:
        event["parent_user_id"] = parent_user_id
    return body


def message_changed(
    channel: str,
    *,
    ts: str,
    thread_ts: str | None,
    user: str,
    text: str,
    previous_text: str,
    files: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An edit (event_message_changed.json): the message as it is now and as it was. The
    sample's `message` has no `ts`/`thread_ts`; Slack's documented shape has them (the edited
    message's own ts and thread), so they are set here, as is `edited`."""
    body = _event_callback("event_message_changed.json", BOT_USER_ID)
    event = body["event"]
    now = new_ts()
    event.update(channel=channel, ts=now, event_ts=now)
    for key, words in (("message", text), ("previous_message", previous_text)):
        message = event[key]
        message.update(user=user, text=words, ts=ts)
        message["blocks"][0]["elements"][0]["elements"] = [{"type": "text", "text": words}]
        if thread_ts is not None:
            message["thread_ts"] = thread_ts
        if files:
            message["files"] = copy.deepcopy(files)
    event["message"]["edited"] = {"user": user, "ts": now}
    return body


def message_deleted(
    channel: str, *, ts: str, thread_ts: str | None, user: str, text: str
) -> dict[str, Any]:
    """A deletion (event_message_deleted.json, Slack's documented example): `deleted_ts`
    names the message; `previous_message` (in Slack's type for the event, not the example)
    is the message as it was."""
    body = _event_callback("event_message_deleted.json", BOT_USER_ID)
    event = body["event"]
    now = new_ts()
    event.update(channel=channel, ts=now, event_ts=now, deleted_ts=ts)
    previous: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": ts}
    if thread_ts is not None:
        previous["thread_ts"] = thread_ts
    event["previous_message"] = previous
    return body


TOMBSTONE_TEXT = "This message was deleted."


def tombstone(
    channel: str, *, ts: str, thread_ts: str | None, user: str, text: str
) -> dict[str, Any]:
    """A deleted message whose thread stays: a `message_changed` (its sample) whose message
    is Slack's placeholder (`subtype: tombstone`, by USLACKBOT; see SOURCES.md)."""
    body = message_changed(
        channel, ts=ts, thread_ts=thread_ts, user=user, text=TOMBSTONE_TEXT, previous_text=text
    )
    message = body["event"]["message"]
    message.update(subtype="tombstone", user="USLACKBOT", hidden=True)
    message.pop("edited", None)
    return body


def block_action(
    action_id: str,
    value: str | None = None,
    *,
    user: str = "U111",
    channel: str = "C111",
    message_ts: str | None = None,
    message: dict[str, Any] | None = None,
    response_url: str | None = None,
    trigger_id: str | None = None,
) -> dict[str, Any]:
    """A click on the button `action_id` (block_actions.json). Pass the message as the app
    posted it (`slack.message(ch, ts).to_api()`): its button with that `action_id` supplies
    `block_id`, `text` and `value`, as in a real click."""
    body: dict[str, Any] = load_json("block_actions.json")
    action = body["actions"][0]
    if message is not None:
        body["message"] = copy.deepcopy(message)
        message_ts = message_ts or message["ts"]
        block_id, button = _find_button(message.get("blocks") or [], action_id)
        action.update({k: v for k, v in button.items() if k in ("text", "value", "style")})
        action["block_id"] = block_id
    else:
        message_ts = message_ts or new_ts()
        body["message"]["ts"] = message_ts
        button = body["message"]["blocks"][0]["elements"][0]
        button.update(action_id=action_id, value=value)
        action.pop("value")
        if value is None:
            button.pop("value")
    action.update(action_id=action_id, action_ts=new_ts())
    if value is not None:
        action["value"] = value
    body["user"]["id"] = user
    body["container"].update(message_ts=message_ts, channel_id=channel)
    body["channel"]["id"] = channel
    body["trigger_id"] = trigger_id or new_trigger_id()
    _set(body, response_url=response_url)
    return body


def view_submission(
    callback_id: str | None = None,
    values: dict[str, dict[str, str | dict[str, Any]]] | None = None,
    *,
    user: str = "U123",
    private_metadata: str | None = None,
    view: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Submitting a modal (view_submission.json). `values` is {block_id: {action_id: value}};
    a str value is what the user typed in a plain_text_input. Pass `view` (as opened through
    views.open) to submit that modal: its id, callback_id, blocks and metadata are used."""
    body: dict[str, Any] = load_json("view_submission.json")
    target = body["view"]
    if view is not None:
        target.update(copy.deepcopy(view))
    else:
        target["id"] = target["root_view_id"] = new_id("V")
        target["blocks"] = [
            _input_block(b, a) for b, actions in (values or {}).items() for a in actions
        ]
    target["state"] = {
        "values": {
            block_id: {
                action_id: v if isinstance(v, dict) else {"type": "plain_text_input", "value": v}
                for action_id, v in actions.items()
            }
            for block_id, actions in (values or {}).items()
        }
    }
    _set(target, callback_id=callback_id, private_metadata=private_metadata)
    body["user"]["id"] = user
    body["trigger_id"] = new_trigger_id()
    return body


def url_verification(challenge: str = "valid_challenge_token") -> dict[str, Any]:
    body: dict[str, Any] = load_json("url_verification.json")
    body["challenge"] = challenge
    return body


def _event_callback(sample: str, bot_user_id: str) -> dict[str, Any]:
    body: dict[str, Any] = load_json(sample)
    body["event_id"] = new_id("Ev")
    body["event_time"] = int(time.time())
    body["authorizations"][0]["user_id"] = bot_user_id  # the installation: the app's bot user
    return body


def _message_fields(
    event: dict[str, Any], *, user: str, channel: str, ts: str | None, thread_ts: str | None
) -> None:
    ts = ts or new_ts()
    event.update(user=user, channel=channel, ts=ts, event_ts=ts)
    if "client_msg_id" in event:
        event["client_msg_id"] = str(uuid.uuid4())
    if thread_ts is not None:
        event["thread_ts"] = thread_ts


def _find_button(blocks: list[dict[str, Any]], action_id: str) -> tuple[str, dict[str, Any]]:
    for block in blocks:
        elements = [*block.get("elements", []), block.get("accessory") or {}]
        for element in elements:
            if element.get("action_id") == action_id:
                return block.get("block_id", new_id("b")), element
    raise ValueError(f"the message has no element with action_id {action_id!r}")


def _input_block(block_id: str, action_id: str) -> dict[str, Any]:
    return {
        "type": "input",
        "block_id": block_id,
        "label": {"type": "plain_text", "text": block_id, "emoji": True},
        "optional": False,
        "element": {"type": "plain_text_input", "action_id": action_id},
    }


def _set(target: dict[str, Any], **fields: Any) -> None:
    """Override the fields given (not None); leave the sample's value for the rest."""
    target.update({k: v for k, v in fields.items() if v is not None})
