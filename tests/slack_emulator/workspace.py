"""The emulated workspace and the Web API methods that read and change it.

Each method takes the request's params and returns the fields of an `ok: true` answer, or
raises `ApiError` for an `ok: false` one; answers follow the shapes of the samples
`api_<method>.json`, with realistic values. Callers hold the emulator's lock."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any

from tests.slack_emulator import blocks as limits
from tests.slack_emulator.files import Files
from tests.slack_emulator.model import ApiError, Ephemeral, Message
from tests.slack_emulator.payloads import new_id, new_ts
from tests.slack_samples import load_json

Params = dict[str, Any]
JSON_FIELDS = ("blocks", "attachments", "view", "metadata")  # JSON strings in form bodies
METADATA_LIMIT = 8000  # characters of JSON; Slack answers metadata_too_large beyond its limit


class Workspace:
    def __init__(
        self,
        *,
        team_id: str,
        team: str,
        domain: str,
        bot_user_id: str,
        bot_id: str,
        app_id: str,
        open_socket: Callable[[], str],
        upload_base: str = "http://127.0.0.1/upload/v1/",
    ) -> None:
        self.team_id, self.team, self.domain = team_id, team, domain
        self.bot_user_id, self.bot_id, self.app_id = bot_user_id, bot_id, app_id
        self.open_socket = open_socket  # issues a Socket Mode URL (apps.connections.open)
        self.messages: dict[tuple[str, str], Message] = {}
        self.ephemerals: list[Ephemeral] = []
        self.opened_views: list[dict[str, Any]] = []
        self.homes: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.channel_errors: dict[str, str] = {}
        self.update_errors: dict[tuple[str, str], str] = {}  # (channel, ts) -> chat.update error
        self.files = Files(upload_base)
        self.methods: dict[str, Callable[[Params], dict[str, Any]]] = {
            "auth.test": self.auth_test,
            "apps.connections.open": lambda p: {"url": self.open_socket()},
            "chat.postMessage": self.chat_post_message,
            "chat.update": self.chat_update,
            "chat.postEphemeral": self.chat_post_ephemeral,
            "chat.getPermalink": self.chat_get_permalink,
            "conversations.history": self.conversations_history,
            "conversations.replies": self.conversations_replies,
            "reactions.add": self.reactions_add,
            "reactions.remove": self.reactions_remove,
            "views.open": self.views_open,
            "views.publish": self.views_publish,
            "users.info": self.users_info,
            "conversations.open": self.conversations_open,
            "files.getUploadURLExternal": self.files.get_upload_url,
            "files.completeUploadExternal": self.files_complete_upload_external,
            "files.info": self.files.info,
        }

    def auth_test(self, p: Params) -> dict[str, Any]:
        return {
            "url": f"https://{self.domain}.slack.com/",
            "team": self.team,
            "user": "nightcrew",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def chat_post_message(self, p: Params) -> dict[str, Any]:
        channel = self._channel(p)
        self._check_content(p)
        self._check_metadata(p)
        message = Message(
            channel=channel,
            ts=new_ts(),
            user=self.bot_user_id,
            text=p.get("text") or "",
            blocks=p.get("blocks") or [],
            attachments=p.get("attachments") or [],
            thread_ts=p.get("thread_ts") or None,
            bot_id=self.bot_id,
            app_id=self.app_id,
            team=self.team_id,
            metadata=p.get("metadata") or None,
        )
        self.messages[channel, message.ts] = message
        return {"channel": channel, "ts": message.ts, "message": message.to_api()}

    def files_complete_upload_external(self, p: Params) -> dict[str, Any]:
        """Share the uploaded files: one message of the bot's holding them, in `channel_id`
        (the thread of `thread_ts`, which must be a thread's root), or private without it."""
        uploads = self.files.complete(p)
        channel = p.get("channel_id") or p.get("channels")
        thread = p.get("thread_ts") or None
        created = int(float(new_ts()))
        if channel:
            channel = self._channel({"channel": channel})
            if thread is not None:
                root = self.messages.get((channel, thread))
                if root is None or root.is_reply:
                    raise ApiError("invalid_thread_ts")
            if len(str(p.get("initial_comment") or "")) > limits.MESSAGE_TEXT:
                raise ApiError("msg_too_long")
            message = Message(
                channel=channel,
                ts=new_ts(),
                user=self.bot_user_id,
                text=str(p.get("initial_comment") or ""),
                thread_ts=thread,
                bot_id=self.bot_id,
                app_id=self.app_id,
                team=self.team_id,
            )
            for upload in uploads:
                upload.shares.append((channel, message.ts))
            message.files = [
                u.to_api(team=self.team_id, user=self.bot_user_id, created=created) for u in uploads
            ]
            self.messages[channel, message.ts] = message
        return {"files": [{"id": u.file_id, "title": u.title or u.filename} for u in uploads]}

    def chat_update(self, p: Params) -> dict[str, Any]:
        channel = self._channel(p)
        if (channel, p.get("ts")) in self.update_errors:
            raise ApiError(self.update_errors[channel, p["ts"]])
        message = self._message(channel, p.get("ts"))
        if message.user != self.bot_user_id:
            raise ApiError("cant_update_message")
        self._check_content(p)
        self._check_metadata(p)
        message.versions.append(
            {"text": message.text, "blocks": message.blocks, "edited_ts": new_ts()}
        )
        if "text" in p:
            message.text = p["text"] or ""
        for name in ("blocks", "attachments"):
            if name in p:  # left out: kept, as Slack keeps them; [] clears
                setattr(message, name, p[name])
        if "metadata" in p:
            message.metadata = p["metadata"] or None
        return {
            "channel": message.channel,
            "ts": message.ts,
            "text": message.text,
            "message": message.to_api(),
        }

    def chat_post_ephemeral(self, p: Params) -> dict[str, Any]:
        channel = self._channel(p)
        if not p.get("user"):
            raise ApiError("user_not_in_channel")
        self._check_content(p)
        ephemeral = Ephemeral(
            channel=channel,
            user=p["user"],
            text=p.get("text") or "",
            blocks=p.get("blocks") or [],
            thread_ts=p.get("thread_ts") or None,
            message_ts=new_ts(),
        )
        self.ephemerals.append(ephemeral)
        return {"message_ts": ephemeral.message_ts}

    def chat_get_permalink(self, p: Params) -> dict[str, Any]:
        message = self._message(self._channel(p), p.get("message_ts"))
        link = f"https://{self.domain}.slack.com/archives/{message.channel}/p"
        link += message.ts.replace(".", "")
        if message.is_reply:
            link += f"?thread_ts={message.thread_ts}&cid={message.channel}"
        return {"channel": message.channel, "permalink": link}

    def conversations_replies(self, p: Params) -> dict[str, Any]:
        channel = self._channel(p)
        root = self.messages.get((channel, p.get("ts") or ""))
        if root is None:
            raise ApiError("thread_not_found")
        if root.is_reply:
            root = self.messages.get((channel, root.thread_ts or ""), root)
        replies = sorted(
            (m for m in self.messages.values() if m.channel == channel and m.thread_ts == root.ts),
            key=lambda m: float(m.ts),
        )
        replies = [m for m in replies if m.is_reply and _within(m.ts, p)]
        meta = _flag(p, "include_all_metadata")
        head = root.to_api(metadata=meta)
        if replies:
            users = list(dict.fromkeys(m.user for m in replies))
            head.update(
                thread_ts=root.ts,
                reply_count=len(replies),
                reply_users=users,
                reply_users_count=len(users),
                latest_reply=replies[-1].ts,
            )
        limit = int(p.get("limit") or 1000)
        tail = [{**m.to_api(metadata=meta), "parent_user_id": root.user} for m in replies]
        tail = tail[: max(limit - 1, 0)]
        return {
            "messages": [head, *tail],
            "has_more": False,
            "response_metadata": {"next_cursor": ""},
        }

    def conversations_history(self, p: Params) -> dict[str, Any]:
        """The channel's messages, newest first: top-level ones only (replies live in
        conversations.replies), a page of `limit` (default 100) per call, `next_cursor` for the
        rest; `metadata` only with `include_all_metadata`."""
        channel = self._channel(p)
        found = sorted(
            (
                m
                for m in self.messages.values()
                if m.channel == channel and not m.is_reply and _within(m.ts, p)
            ),
            key=lambda m: float(m.ts),
            reverse=True,
        )
        cursor = str(p.get("cursor") or "")
        if cursor:
            try:
                before = base64.b64decode(cursor).decode().removeprefix("next_ts:")
                found = [m for m in found if float(m.ts) < float(before)]
            except ValueError:
                raise ApiError("invalid_cursor") from None
        limit = min(max(int(p.get("limit") or 100), 1), 999)
        page, more = found[:limit], len(found) > limit
        next_cursor = base64.b64encode(f"next_ts:{page[-1].ts}".encode()).decode() if more else ""
        meta = _flag(p, "include_all_metadata")
        return {
            "messages": [m.to_api(metadata=meta) for m in page],
            "has_more": more,
            "pin_count": 0,
            "channel_actions_ts": None,
            "channel_actions_count": 0,
            "response_metadata": {"next_cursor": next_cursor},
        }

    def reactions_add(self, p: Params) -> dict[str, Any]:
        message, name = self._reaction_target(p)
        users = message.reactions.setdefault(name, [])
        if self.bot_user_id in users:
            raise ApiError("already_reacted")
        users.append(self.bot_user_id)
        return {}

    def reactions_remove(self, p: Params) -> dict[str, Any]:
        message, name = self._reaction_target(p)
        users = message.reactions.get(name, [])
        if self.bot_user_id not in users:
            raise ApiError("no_reaction")
        users.remove(self.bot_user_id)
        if not users:
            del message.reactions[name]
        return {}

    def views_open(self, p: Params) -> dict[str, Any]:
        if not p.get("trigger_id"):
            raise ApiError(
                "invalid_arguments", response_metadata={"messages": ["invalid `trigger_id`"]}
            )
        view = self._view(p, "modal")
        self.opened_views.append(view)
        return {"view": view}

    def views_publish(self, p: Params) -> dict[str, Any]:
        user = p.get("user_id")
        if not user:
            raise ApiError(
                "invalid_arguments", response_metadata={"messages": ["missing `user_id`"]}
            )
        view = self._view(p, "home")
        self.homes[user] = view
        return {"view": view}

    def conversations_open(self, p: Params) -> dict[str, Any]:
        """The app's DM with one person (`users`); the same id every time, as in Slack."""
        users = str(p.get("users") or "")
        if not users.startswith(("U", "W")) or "," in users:
            raise ApiError("user_not_found")
        return {"channel": {"id": dm_id(users)}}

    def users_info(self, p: Params) -> dict[str, Any]:
        user_id = p.get("user") or ""
        if not user_id.startswith(("U", "W")):
            raise ApiError("user_not_found")
        user: dict[str, Any] = load_json("api_users.info.json")["user"]
        user.update(
            id=user_id, team_id=self.team_id, name=user_id.lower(), real_name=f"User {user_id}"
        )
        user.update(is_bot=user_id == self.bot_user_id, is_admin=False)
        user["profile"].update(
            display_name=user_id.lower(), real_name=f"User {user_id}", team=self.team_id
        )
        for key, value in self.users.get(user_id, {}).items():
            target = user["profile"] if key in user["profile"] and key not in user else user
            target[key] = value
        return {"user": user}

    def _channel(self, p: Params) -> str:
        channel = p.get("channel")
        if not channel:
            raise ApiError("channel_not_found")
        if channel in self.channel_errors:
            raise ApiError(self.channel_errors[channel])
        return str(channel)

    def _message(self, channel: str, ts: str | None) -> Message:
        message = self.messages.get((channel, ts or ""))
        if message is None:
            raise ApiError("message_not_found")
        return message

    def _reaction_target(self, p: Params) -> tuple[Message, str]:
        message = self._message(self._channel(p), p.get("timestamp"))
        name = str(p.get("name") or "").strip(":")
        if not name:
            raise ApiError("invalid_name")
        return message, name

    def _check_metadata(self, p: Params) -> None:
        """Slack's shape: {"event_type": str, "event_payload": object}."""
        meta = p.get("metadata")
        if meta is None or meta == []:  # [] is what an empty form field decodes to
            return
        if not (
            isinstance(meta, dict)
            and isinstance(meta.get("event_type"), str)
            and meta["event_type"]
            and isinstance(meta.get("event_payload"), dict)
        ):
            raise ApiError("invalid_metadata_format")
        if len(json.dumps(meta)) > METADATA_LIMIT:
            raise ApiError("metadata_too_large")

    def _check_content(self, p: Params) -> None:
        if not (p.get("text") or p.get("blocks") or p.get("attachments")):
            raise ApiError("no_text")
        if len(p.get("text") or "") > limits.MESSAGE_TEXT:
            raise ApiError("msg_too_long")
        if "blocks" in p:
            limits.check_blocks(p["blocks"])

    def _view(self, p: Params, kind: str) -> dict[str, Any]:
        given = p.get("view")
        if not isinstance(given, dict) or given.get("type") != kind:
            message = f"view must be an object of type `{kind}`"
            raise ApiError("invalid_arguments", response_metadata={"messages": [message]})
        limits.check_blocks(given.get("blocks", []), limit=limits.VIEW_BLOCKS, at="/view/blocks")
        title = (given.get("title") or {}).get("text", "")
        if len(title) > limits.VIEW_TITLE:
            message = (
                f"[ERROR] must be less than {limits.VIEW_TITLE + 1} characters "
                "[json-pointer:/view/title/text]"
            )
            raise ApiError("invalid_arguments", response_metadata={"messages": [message]})
        view: dict[str, Any] = load_json("api_views.open.json")["view"]
        view_id = new_id("V")
        view.update(
            id=view_id,
            root_view_id=view_id,
            team_id=self.team_id,
            app_id=self.app_id,
            bot_id=self.bot_id,
            hash=f"{new_ts()}.{view_id.lower()}",
            previous_view_id=None,
            callback_id="",
            private_metadata="",
            external_id="",
        )
        view.pop("submit")
        view.update(copy.deepcopy(given))
        view["state"] = {"values": {}}
        return view


def dm_id(user: str) -> str:
    """The id of the app's DM with `user` (Slack's start with D)."""
    return "D" + user[1:]


def decode_params(params: Params) -> Params:
    """Form fields that carry JSON (blocks, attachments, view, metadata) decoded, as Slack
    reads them; a field that is not valid JSON is an `invalid_arguments` answer."""
    out = dict(params)
    for name in JSON_FIELDS:
        if isinstance(out.get(name), str):
            try:
                out[name] = json.loads(out[name]) if out[name] else []
            except ValueError:
                error = "invalid_blocks_format" if name == "blocks" else "invalid_arguments"
                raise ApiError(error) from None
    return out


def _flag(p: Params, name: str) -> bool:
    return str(p.get(name, "")).lower() in ("1", "true")


def _within(ts: str, p: Params) -> bool:
    inclusive = _flag(p, "inclusive")
    oldest, latest = p.get("oldest"), p.get("latest")
    if oldest and (float(ts) < float(oldest) or (float(ts) == float(oldest) and not inclusive)):
        return False
    return not (
        latest and (float(ts) > float(latest) or (float(ts) == float(latest) and not inclusive))
    )
