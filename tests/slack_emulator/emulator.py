"""SlackEmulator: one workspace with the Web API and Socket Mode on real local sockets, a
record of everything the app did, and knobs to make Slack misbehave."""

from __future__ import annotations

import contextlib
import copy
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tests.slack_emulator import payloads
from tests.slack_emulator.http_mode import AppResponse, post_to_app
from tests.slack_emulator.model import ApiError, Call, Ephemeral, Fault, Message, ResponsePost
from tests.slack_emulator.payloads import APP_ID, BOT_ID, BOT_USER_ID, TEAM_ID
from tests.slack_emulator.socket_mode import Envelope, SocketConnection, SocketModeServer
from tests.slack_emulator.web_api import Reply, WebAPIServer
from tests.slack_emulator.workspace import Workspace, decode_params
from tests.slack_samples import load_text

T = TypeVar("T")
SCOPES = (
    "app_mentions:read,channels:history,chat:write,commands,groups:history,im:history,"
    "metadata.message:read,im:write,reactions:write,users:read,files:write,files:read"
)
SLACK_HOOKS = "https://hooks.slack.com/"
SERVER_ERROR_BODY = "<html><body><h1>{status} Service Unavailable</h1></body></html>"


class SlackEmulator:
    """A local Slack. Tokens starting `xapp-` are app-level (only apps.connections.open takes
    them); any other known token is a bot token; an unknown one gets `invalid_auth`."""

    def __init__(
        self,
        *,
        tokens: Iterable[str] = ("xoxb-test", "xapp-test"),
        signing_secret: str = "test-signing-secret",
        team_id: str = TEAM_ID,
        team: str = "Nightcrew Test",
        domain: str = "nightcrew-test",
        bot_user_id: str = BOT_USER_ID,
        bot_id: str = BOT_ID,
        app_id: str = APP_ID,
        scopes: str = SCOPES,
    ) -> None:
        self.tokens = set(tokens)
        self.signing_secret = signing_secret
        self.bot_user_id, self.bot_id, self.app_id, self.scopes = (
            bot_user_id,
            bot_id,
            app_id,
            scopes,
        )
        self._changed = threading.Condition(threading.RLock())
        self._calls: list[Call] = []
        self._responses: list[ResponsePost] = []
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        self._storms: dict[str, tuple[float, int, int]] = {}  # method -> (until, Retry-After)
        self._random = random.Random(16)
        self._web = WebAPIServer(self)
        self._socket = SocketModeServer(app_id=app_id, changed=self._changed)
        self.workspace = Workspace(
            team_id=team_id,
            team=team,
            domain=domain,
            bot_user_id=bot_user_id,
            bot_id=bot_id,
            app_id=app_id,
            open_socket=self._socket.issue_url,
            upload_base=f"{self._web.base_url}/upload/v1/",
        )

    # -- lifecycle and addresses ---------------------------------------------------------

    def start(self) -> SlackEmulator:
        self._web.start()
        self._socket.start()
        return self

    def stop(self) -> None:
        self._socket.stop()
        self._web.stop()

    def __enter__(self) -> SlackEmulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def http_url(self) -> str:
        return self._web.base_url

    @property
    def api_url(self) -> str:
        """The Web API base URL, for `WebClient(base_url=…)` and `SLACK_API_URL`."""
        return f"{self._web.base_url}/api/"

    @property
    def bot_token(self) -> str:
        return self._token(lambda t: not t.startswith("xapp-"), "bot")

    @property
    def app_token(self) -> str:
        return self._token(lambda t: t.startswith("xapp-"), "app-level (xapp-)")

    def env(self) -> dict[str, str]:
        """The environment a bot process needs to talk to this emulator."""
        env = {"SLACK_API_URL": self.api_url, "SLACK_SIGNING_SECRET": self.signing_secret}
        env["SLACK_BOT_TOKEN"] = self.bot_token
        if any(t.startswith("xapp-") for t in self.tokens):
            env["SLACK_APP_TOKEN"] = self.app_token
        return env

    # -- making Slack misbehave ----------------------------------------------------------

    def fail(
        self,
        method: str,
        *,
        status: int | None = None,
        error: str | None = None,
        retry_after: int | None = None,
        body: str | None = None,
        drop: bool = False,
        applied: bool = False,
        times: int = 1,
    ) -> None:
        """Answer the next `times` calls of `method` with a fault: `status=429` (Retry-After:
        `retry_after`, default 1; body api_error_ratelimited.json), `status=500|503`, an
        `error` (`{"ok": false, "error": …}`, HTTP 200), or `drop` (hang up; with `applied`
        the call takes effect first, so the app cannot know it did)."""
        if (status is not None) + (error is not None) + drop != 1:
            raise ValueError("give exactly one of status=, error=, drop=True")
        if status == 429 and retry_after is None:
            retry_after = 1
        fault = Fault(status or 200, error, retry_after, body, drop, applied)
        with self._changed:
            self._faults[method].extend([fault] * times)

    def storm(self, *methods: str, seconds: float, retry_after: tuple[int, int] = (1, 3)) -> None:
        """A rate-limit storm: for `seconds` from now every call of `methods` is answered 429
        (body api_error_ratelimited.json, as Slack sends it) with a Retry-After drawn from
        `retry_after` (lowest, highest), unless a scripted fault comes first. `calls()` keeps
        each answer's Retry-After, so a test can check the app waited as told."""
        until = time.monotonic() + seconds
        with self._changed:
            for method in methods:
                self._storms[method] = (until, *retry_after)

    def refuse_update(self, channel: str, ts: str, error: str = "cant_update_message") -> None:
        """chat.update of message `ts` fails with `error` from now on (Slack's answer for a
        message the app may no longer edit; `message_not_found` once it was deleted)."""
        with self._changed:
            self.workspace.update_errors[channel, ts] = error

    def hold(self, method: str) -> threading.Event:
        """The next call of `method` takes effect at once, but its answer waits until the
        returned event is set (at most a minute): time to kill the app after Slack accepted
        its call and before it could learn so. `calls()` shows the call on arrival.
        `file_download` holds the next download of a reply's file the same way."""
        release = threading.Event()
        with self._changed:
            self._faults[method].append(Fault(hold=release))
        return release

    def channel_error(self, channel: str, error: str = "channel_not_found") -> None:
        """Every call naming `channel` fails with `error` from now on."""
        with self._changed:
            self.workspace.channel_errors[channel] = error

    def upload_limit(self, size: int) -> None:
        """Uploads larger than `size` bytes are refused (`file_upload_size_restricted`), as
        in a workspace whose admins restricted large files."""
        with self._changed:
            self.workspace.files.limit = size

    def receive_upload(self, token: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """The POST of a file's bytes to its upload URL (not a Web API method)."""
        with self._changed:
            answer = self.workspace.files.receive(token, body, content_type)
            self._calls.append(
                Call(
                    "upload",
                    {"token": token, "bytes": len(body)},
                    None,
                    time.monotonic(),
                    answer[0],
                    None,
                )
            )
            self._changed.notify_all()
        return answer

    def serve_file(self, path: str, authorization: str) -> Reply:
        """GET of a file's url_private(_download): its bytes for a bot token of this
        workspace; without one, Slack's answer to a browser that is not signed in (a
        redirect to the sign-in page). Every download is recorded as a `file_download` call."""
        token = authorization.removeprefix("Bearer ").strip() or None
        with self._changed:
            queue = self._faults.get("file_download")
            held = queue.popleft().hold if queue else None
            data = self.workspace.files.download(path)
            allowed = token in self.tokens and not (token or "").startswith("xapp-")
            status = 200 if data is not None and allowed else (302 if not allowed else 404)
            self._calls.append(
                Call("file_download", {"path": path}, token, time.monotonic(), status, None)
            )
            self._changed.notify_all()
        if held is not None:
            held.wait(60)  # outside the lock: the rest of Slack keeps answering
        if status == 200 and self.workspace.files.redirect_to:
            return Reply(302, b"", "text/html", {"Location": self.workspace.files.redirect_to})
        if status == 302:
            signin = f"https://{self.workspace.domain}.slack.com/?redir={path}"
            return Reply(302, b"", "text/html", {"Location": signin})
        if data is None:
            return Reply(404, b"not found", "text/plain")
        return Reply(200, data, "application/octet-stream")

    def redirect_files(self, url: str | None) -> None:
        """Answer every authorised file download with a redirect to `url` (None: stop)."""
        with self._changed:
            self.workspace.files.redirect_to = url

    def uploaded(self, channel: str | None = None) -> list[Message]:
        """The messages that share files, oldest first (optionally in one channel)."""
        return [m for m in self.messages(channel) if m.files]

    def add_user(self, user_id: str, **fields: Any) -> None:
        """users.info answers for any U…/W… id; these fields (name, real_name, tz, is_bot,
        display_name, …) override the generated ones."""
        with self._changed:
            self.workspace.users.setdefault(user_id, {}).update(fields)

    # -- what the app did ----------------------------------------------------------------

    def calls(self, *methods: str) -> list[Call]:
        """Every Web API request (faulted ones too), in arrival order; only `methods` if given."""
        with self._changed:
            return [c for c in self._calls if not methods or c.method in methods]

    def messages(self, channel: str | None = None, *, by: str | None = None) -> list[Message]:
        """Messages as they stand now (after updates), oldest first, as snapshots; only those
        in `channel` and written by user `by` (e.g. `slack.bot_user_id`) when given."""
        with self._changed:
            found = [
                m
                for m in self.workspace.messages.values()
                if channel in (None, m.channel) and by in (None, m.user)
            ]
            return copy.deepcopy(sorted(found, key=lambda m: float(m.ts)))

    def message(self, channel: str, ts: str) -> Message:
        with self._changed:
            if (channel, ts) not in self.workspace.messages:
                raise KeyError(f"no message {ts} in {channel}")
            return copy.deepcopy(self.workspace.messages[channel, ts])

    def thread(self, channel: str, ts: str) -> list[Message]:
        """The root message and its replies, oldest first."""
        return [m for m in self.messages(channel) if ts in (m.ts, m.thread_ts)]

    def ephemerals(self, user: str | None = None) -> list[Ephemeral]:
        with self._changed:
            return [e for e in self.workspace.ephemerals if user in (None, e.user)]

    def responses(self) -> list[ResponsePost]:
        """Posts to the response_urls of payloads sent through the emulator, in order."""
        with self._changed:
            return list(self._responses)

    def opened_views(self) -> list[dict[str, Any]]:
        """Modals opened with views.open, as Slack stored them (with their `id`)."""
        with self._changed:
            return copy.deepcopy(self.workspace.opened_views)

    def home(self, user_id: str) -> dict[str, Any] | None:
        """The App Home view last published for `user_id`."""
        with self._changed:
            return copy.deepcopy(self.workspace.homes.get(user_id))

    def wait_until(self, check: Callable[[], T], timeout: float = 5.0, what: str = "") -> T:
        """Wait until `check()` is truthy (re-checked on every call, ack or connection) and
        return its value; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (value := check()):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"waited {timeout} s for {what or check}")
                self._changed.wait(min(left, 0.1))
            return value

    # -- acting as the people in the workspace --------------------------------------------

    def post_as_user(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> list[dict[str, Any]]:
        """`user` writes `text` (in the thread `thread_ts` if given). The message is stored
        (conversations.replies sees it) and the Events API payloads Slack would deliver are
        returned: a `message` event, then an `app_mention` if the text mentions the bot."""
        ts = payloads.new_ts()
        with self._changed:
            root = self.workspace.messages.get((channel, thread_ts or ""))
            message = Message(
                channel, ts, user, text, thread_ts=thread_ts, team=self.workspace.team_id
            )
            self.workspace.messages[channel, ts] = message
            self._changed.notify_all()
        if thread_ts is None:
            events = [payloads.channel_message(text, user=user, channel=channel, ts=ts)]
        else:
            parent = root.user if root else self.bot_user_id
            events = [
                payloads.thread_reply(channel, thread_ts, user, text, ts=ts, parent_user_id=parent)
            ]
        if f"<@{self.bot_user_id}>" in text:
            events.append(
                payloads.app_mention(
                    text,
                    user=user,
                    channel=channel,
                    thread_ts=thread_ts,
                    ts=ts,
                    bot_user_id=self.bot_user_id,
                )
            )
        return events

    def broadcast_as_user(
        self, channel: str, user: str, text: str, *, thread_ts: str
    ) -> dict[str, Any]:
        """`user` replies in the thread with "Also send to channel" ticked: the message is
        stored (in the thread and the channel) and its `thread_broadcast` event returned."""
        ts = payloads.new_ts()
        with self._changed:
            root = self.workspace.messages.get((channel, thread_ts))
            message = Message(
                channel, ts, user, text, thread_ts=thread_ts, team=self.workspace.team_id
            )
            self.workspace.messages[channel, ts] = message
            self._changed.notify_all()
        fields = {"user": root.user, "text": root.text} if root else {}
        return payloads.thread_broadcast(channel, thread_ts, user, text, ts=ts, root=fields)

    def share_file_as_user(
        self,
        channel: str,
        user: str,
        text: str,
        files: list[tuple[str, bytes, str]],
        *,
        thread_ts: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """`user` posts `text` with files (name, bytes, mimetype), in the thread `thread_ts`
        if given: the files are kept (served at their url_private_download to a bot token,
        described by files.info) and the `file_share` event returned. `fields` override every
        file object's (e.g. a `url_private_download` pointing elsewhere)."""
        ts = payloads.new_ts()
        with self._changed:
            team = self.workspace.team_id
            objects = [
                self.workspace.files.add_shared(
                    name=name, data=data, mimetype=kind, user=user, team=team, **fields
                )
                for name, data, kind in files
            ]
            root = self.workspace.messages.get((channel, thread_ts or ""))
            message = Message(channel, ts, user, text, thread_ts=thread_ts, team=team)
            message.files = objects
            self.workspace.messages[channel, ts] = message
            self._changed.notify_all()
        parent = root.user if root else self.bot_user_id
        return payloads.file_share(
            channel, user, text, objects, thread_ts=thread_ts, ts=ts, parent_user_id=parent
        )

    def edit_as_user(self, channel: str, ts: str, text: str) -> dict[str, Any]:
        """The author of message `ts` edits it to `text`: stored, and the `message_changed`
        event returned."""
        with self._changed:
            message = self.workspace.messages[channel, ts]
            previous = message.text
            message.versions.append({"text": previous, "blocks": message.blocks})
            message.text = text
            self._changed.notify_all()
            snapshot = copy.deepcopy(message)
        return payloads.message_changed(
            channel,
            ts=ts,
            thread_ts=snapshot.thread_ts,
            user=snapshot.user,
            text=text,
            previous_text=previous,
            files=snapshot.files,
        )

    def delete_as_user(self, channel: str, ts: str) -> dict[str, Any]:
        """The author of message `ts` deletes it: gone from the channel, and the
        `message_deleted` event returned (with the message as it was)."""
        with self._changed:
            message = self.workspace.messages.pop((channel, ts))
            self._changed.notify_all()
        return payloads.message_deleted(
            channel, ts=ts, thread_ts=message.thread_ts, user=message.user, text=message.text
        )

    def tombstone_as_user(self, channel: str, ts: str) -> dict[str, Any]:
        """Message `ts` is deleted while its thread stays: Slack leaves a placeholder and
        sends `message_changed` with a `tombstone` message."""
        with self._changed:
            message = self.workspace.messages[channel, ts]
            previous = message.text
            message.text = payloads.TOMBSTONE_TEXT
            self._changed.notify_all()
            snapshot = copy.deepcopy(message)
        return payloads.tombstone(
            channel, ts=ts, thread_ts=snapshot.thread_ts, user=snapshot.user, text=previous
        )

    def _own_response_urls(self, payload: dict[str, Any]) -> dict[str, Any]:
        """`payload` with its response_url(s) on this emulator instead of hooks.slack.com:
        Slack hands them out, so the emulator does, and `respond()` lands in `responses()`."""
        payload = copy.deepcopy(payload)
        targets = [payload, *(payload.get("response_urls") or [])]
        for target in targets:
            url = target.get("response_url")
            if isinstance(url, str) and url.startswith(SLACK_HOOKS):
                target["response_url"] = f"{self.http_url}/hooks/{url.removeprefix(SLACK_HOOKS)}"
        return payload

    def record_response(self, url: str, body: dict[str, Any]) -> None:
        with self._changed:
            self._responses.append(ResponsePost(url, body, time.monotonic()))
            self._changed.notify_all()

    # -- Socket Mode ----------------------------------------------------------------------

    def send_envelope(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        wait: bool = True,
        timeout: float = 3.0,
        accepts_response_payload: bool | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
    ) -> Envelope:
        """Push `payload` in an envelope of `kind` (slash_commands, events_api, interactive)
        to the newest connection; with `wait`, return once the app acked (TimeoutError if it
        does not within `timeout`: Slack's own deadline is 3 s). Its response_url, if any,
        is pointed here (see `responses()`)."""
        envelope = self._socket.send_envelope(
            kind,
            self._own_response_urls(payload),
            accepts_response_payload=accepts_response_payload,
            retry_attempt=retry_attempt,
            retry_reason=retry_reason,
            timeout=timeout,
        )
        if wait:
            envelope.wait_ack(timeout)
        return envelope

    def redeliver(
        self,
        envelope: Envelope,
        *,
        retry_attempt: int = 1,
        retry_reason: str = "timeout",
        wait: bool = True,
        timeout: float = 3.0,
    ) -> Envelope:
        """Send `envelope` again, same envelope_id and payload, as Slack does when the ack did
        not reach it in time (events also say which attempt this is, and why)."""
        again = self._socket.send_envelope(
            envelope.type,
            envelope.payload,
            accepts_response_payload=None,
            retry_attempt=retry_attempt,
            retry_reason=retry_reason,
            timeout=timeout,
            envelope_id=envelope.envelope_id,
        )
        if wait:
            again.wait_ack(timeout)
        return again

    def send_disconnect(self, reason: str | None = None) -> SocketConnection:
        return self._socket.send_disconnect(reason)

    def close_connections(self, code: int = 1001) -> None:
        self._socket.close_connections(code)

    def wait_connected(self, *, total: int = 1, timeout: float = 5.0) -> SocketConnection:
        return self._socket.wait_connected(total=total, timeout=timeout)

    def connections(self) -> list[SocketConnection]:
        with self._changed:
            return list(self._socket.connections)

    def envelopes(self, kind: str | None = None) -> list[Envelope]:
        with self._changed:
            return [e for e in self._socket.envelopes.values() if kind in (None, e.type)]

    # -- HTTP mode ------------------------------------------------------------------------

    def post_to_app(
        self, url: str, payload: dict[str, Any] | None = None, **knobs: Any
    ) -> AppResponse:
        """`http_mode.post_to_app` signed with this workspace's signing secret; the payload's
        response_url, if any, is pointed here (see `responses()`)."""
        if payload is not None:
            payload = self._own_response_urls(payload)
        return post_to_app(url, payload, signing_secret=self.signing_secret, **knobs)

    # -- the Web API, called by the HTTP transport ----------------------------------------

    def handle_api(self, method: str, params: dict[str, Any], token: str | None) -> Reply:
        with self._changed:
            queue = self._faults.get(method)
            fault = queue.popleft() if queue else self._storm_fault(method)
            reply, error = self._answer(method, params, token, fault)
            status = 0 if reply.hang_up else reply.status
            with contextlib.suppress(ApiError):  # record blocks/view decoded when they parse
                params = decode_params(params)
            after = fault.retry_after if fault is not None and status == 429 else None
            self._calls.append(Call(method, params, token, time.monotonic(), status, error, after))
            self._changed.notify_all()
        if fault is not None and fault.hold is not None:
            fault.hold.wait(60)  # outside the lock: the rest of Slack keeps answering
        return reply

    def _storm_fault(self, method: str) -> Fault | None:
        until, lowest, highest = self._storms.get(method, (0.0, 0, 0))
        if time.monotonic() >= until:
            return None
        return Fault(429, retry_after=self._random.randint(lowest, highest))

    def _answer(
        self, method: str, params: dict[str, Any], token: str | None, fault: Fault | None
    ) -> tuple[Reply, str | None]:
        if fault is not None and not fault.drop and fault.hold is None and not fault.applied:
            return _fault_reply(fault), fault.error or (
                "ratelimited" if fault.status == 429 else None
            )
        if fault is not None and fault.drop and not fault.applied:
            return Reply(0, hang_up=True), None
        try:
            result = self._run(method, params, token)
        except ApiError as e:
            return Reply.json({"ok": False, "error": e.error, **e.extra}), e.error
        if fault is not None and fault.drop:
            return Reply(0, hang_up=True), None
        if fault is not None and fault.applied and fault.hold is None:  # done, yet an error
            return _fault_reply(fault), fault.error or (
                "ratelimited" if fault.status == 429 else None
            )
        headers = {} if (token or "").startswith("xapp-") else {"x-oauth-scopes": self.scopes}
        return Reply.json({"ok": True, **result}, headers), None

    def _run(self, method: str, params: dict[str, Any], token: str | None) -> dict[str, Any]:
        run = self.workspace.methods.get(method)
        if run is None:
            raise ApiError("unknown_method", req_method=method)
        if not token:
            raise ApiError("not_authed")
        if token not in self.tokens:
            raise ApiError("invalid_auth")
        if token.startswith("xapp-") != (method == "apps.connections.open"):
            raise ApiError("not_allowed_token_type")
        return run(decode_params(params))

    def _token(self, match: Callable[[str], bool], kind: str) -> str:
        found = sorted(t for t in self.tokens if match(t))
        if not found:
            raise LookupError(f"the emulator has no {kind} token; tokens: {sorted(self.tokens)}")
        return found[0]


def _fault_reply(fault: Fault) -> Reply:
    if fault.error is not None:
        return Reply.json({"ok": False, "error": fault.error})
    if fault.status == 429:
        body = fault.body or load_text("api_error_ratelimited.json")
        return Reply(
            429,
            body.encode(),
            "application/json;charset=utf-8",
            {"Retry-After": str(fault.retry_after)},
        )
    body = fault.body or SERVER_ERROR_BODY.format(status=fault.status)
    return Reply(fault.status, body.encode(), "text/html")
