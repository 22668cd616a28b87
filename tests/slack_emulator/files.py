"""Slack's current file upload, three steps (the `files.upload` method is retired):

1. `files.getUploadURLExternal` (filename, length in bytes) -> `{"upload_url", "file_id"}`;
2. a POST of the bytes (raw, or multipart form) to `upload_url`: `200 OK - <length>`;
3. `files.completeUploadExternal` (files=[{"id", "title"}], channel_id, thread_ts,
   initial_comment) -> `{"files": [file object]}`; the file is then shared: a message of the
   bot's in the channel (or the thread) whose `files` hold the file object.

Limits and errors as Slack documents them: `length` 0 is `missing_argument`, a length that
is not an integer `invalid_arguments`, more than the workspace allows
`file_upload_size_restricted` (Slack's own cap is 1 GB; `upload_limit` lowers it for tests);
a filename longer than 255 characters `invalid_arguments`. An upload URL takes one POST of
exactly the announced length (else 400, and the file cannot be completed); completing an
id never issued or never uploaded is `file_not_found` (assumed: Slack documents no finer
error); `files` that is not a JSON array of objects with an `id` is `invalid_arguments`.
Completing a file again shares it again (another message): a client that retries the last
step blindly posts twice, as with Slack."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from tests.slack_emulator.model import ApiError

SLACK_FILE_LIMIT = 1024**3
FILENAME_LIMIT = 255


@dataclass
class Upload:
    file_id: str
    filename: str
    length: int
    token: str  # the secret part of the upload URL
    data: bytes | None = None
    title: str = ""
    shares: list[tuple[str, str]] = field(default_factory=list)  # (channel, message ts)

    def to_api(self, *, team: str, user: str, created: int) -> dict[str, Any]:
        """A file object as completeUploadExternal and messages show it."""
        name = self.filename
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else "text"
        return {
            "id": self.file_id,
            "created": created,
            "timestamp": created,
            "name": name,
            "title": self.title or name,
            "mimetype": "text/plain",
            "filetype": ext,
            "pretty_type": ext.capitalize(),
            "user": user,
            "user_team": team,
            "editable": True,
            "size": self.length,
            "mode": "snippet" if ext in ("diff", "txt", "text") else "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": bool(self.shares),
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": f"https://files.slack.com/files-pri/{team}-{self.file_id}/{name}",
            "permalink": f"https://emulated.slack.com/files/{user}/{self.file_id}/{name}",
        }


class Files:
    def __init__(self, upload_base: str, *, limit: int = SLACK_FILE_LIMIT) -> None:
        self.upload_base = upload_base  # e.g. http://127.0.0.1:PORT/upload/v1/
        self.limit = limit
        self.uploads: dict[str, Upload] = {}
        self._by_token: dict[str, Upload] = {}
        self.shared: dict[str, tuple[dict[str, Any], bytes]] = {}  # people's files: object, bytes
        self.redirect_to: str | None = None  # answer downloads with a redirect there

    def add_shared(
        self, *, name: str, data: bytes, mimetype: str, user: str, team: str, **fields: Any
    ) -> dict[str, Any]:
        """A file a person attaches to a message: its file object (the shape of
        event_message_file_share.json's), served at its url_private(_download) on this
        emulator's HTTP port to a bot token only. `fields` override the object's."""
        base = self.upload_base.removesuffix("/upload/v1/")
        file_id = "F" + secrets.token_hex(5).upper()
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else "text"
        created = int(time.time())
        obj: dict[str, Any] = {
            "id": file_id,
            "created": created,
            "timestamp": created,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": ext,
            "pretty_type": ext.capitalize(),
            "user": user,
            "editable": False,
            "size": len(data),
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": True,
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": f"{base}/files-pri/{team}-{file_id}/{name}",
            "url_private_download": f"{base}/files-pri/{team}-{file_id}/download/{name}",
            "permalink": f"https://emulated.slack.com/files/{user}/{file_id}/{name}",
            "has_rich_preview": False,
            **fields,
        }
        self.shared[file_id] = (obj, data)
        return dict(obj)

    def info(self, p: dict[str, Any]) -> dict[str, Any]:
        """files.info: the file object (a shared file or one the app uploaded)."""
        file_id = str(p.get("file") or "")
        if file_id in self.shared:
            return {"file": dict(self.shared[file_id][0])}
        raise ApiError("file_not_found")

    def download(self, path: str) -> bytes | None:
        """The bytes at `/files-pri/<team>-<id>[/download]/<name>`, or None."""
        parts = path.removeprefix("/files-pri/").split("/")
        file_id = parts[0].rsplit("-", 1)[-1] if parts else ""
        found = self.shared.get(file_id)
        return found[1] if found is not None else None

    def get_upload_url(self, p: dict[str, Any]) -> dict[str, Any]:
        filename = str(p.get("filename") or "")
        raw = p.get("length")
        if not filename or raw in (None, ""):
            raise ApiError("invalid_arguments")
        try:
            length = int(raw)
        except (TypeError, ValueError):
            raise ApiError("invalid_arguments") from None
        if length == 0:
            raise ApiError("missing_argument")
        if length < 0 or len(filename) > FILENAME_LIMIT:
            raise ApiError("invalid_arguments")
        if length > self.limit:
            raise ApiError("file_upload_size_restricted")
        file_id = "F" + secrets.token_hex(5).upper()
        token = secrets.token_urlsafe(24)
        upload = Upload(file_id, filename, length, token)
        self.uploads[file_id] = upload
        self._by_token[token] = upload
        return {"upload_url": f"{self.upload_base}{token}", "file_id": file_id}

    def receive(self, token: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        """The POST to an upload URL: (HTTP status, body)."""
        upload = self._by_token.get(token)
        if upload is None or upload.data is not None:
            return 404, b"Not Found"
        data = _file_part(body, content_type) if content_type.startswith("multipart/") else body
        if data is None or len(data) != upload.length:
            return 400, b"Bad Request - length mismatch"
        upload.data = data
        return 200, f"OK - {len(data)}".encode()

    def complete(self, p: dict[str, Any]) -> list[Upload]:
        """The uploads `files` names, checked; the caller shares them."""
        raw = p.get("files")
        try:
            given = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise ApiError("invalid_arguments") from None
        if not isinstance(given, list) or not given:
            raise ApiError("invalid_arguments")
        found = []
        for item in given:
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise ApiError("invalid_arguments")
            upload = self.uploads.get(item["id"])
            if upload is None or upload.data is None:
                raise ApiError("file_not_found")
            upload.title = str(item.get("title") or upload.title)
            found.append(upload)
        return found


def _file_part(body: bytes, content_type: str) -> bytes | None:
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    for part in message.iter_parts():
        if part.get_filename() or part.get_param("name", header="content-disposition") == "file":
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else None
    return None
