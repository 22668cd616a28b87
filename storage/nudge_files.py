"""The files of a Slack reply as a nudge keeps them between the ack and their fetch (pure).

They are Slack's description of the files, untrusted like any event field: only known keys
are kept, strings cut short, sizes made numbers. Nothing here fetches anything; the bot
checks every address again when it fetches (bot/slack/reply_files.py)."""

from __future__ import annotations

from typing import Any

MAX_FILES = 20  # Slack allows 10 files per message; the bot reads at most 5 of them
MAX_CHARS = 2_000  # per field: names, types and Slack's addresses are far shorter
KEPT = (
    "id",
    "name",
    "title",
    "mimetype",
    "filetype",
    "url_private",
    "url_private_download",
    "file_access",
    "mode",
)
MISSED = "nightcrew could not fetch it from Slack in time"


def refs(files: list[Any]) -> list[dict[str, Any]]:
    """What is kept of each file object of a reply, to fetch it later."""
    kept: list[dict[str, Any]] = []
    for file in files[:MAX_FILES]:
        if not isinstance(file, dict):
            continue
        ref: dict[str, Any] = {
            key: str(file[key])[:MAX_CHARS] for key in KEPT if isinstance(file.get(key), str)
        }
        ref["size"] = size(file)
        ref["is_external"] = file.get("is_external") is True
        kept.append(ref)
    return kept


def size(file: dict[str, Any]) -> int:
    try:
        return max(0, int(file.get("size") or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def name(file: dict[str, Any]) -> str:
    return str(file.get("name") or file.get("title") or file.get("id") or "a file")


def missed_note(files: list[dict[str, Any]]) -> str:
    """For the agent: the files it does not get, because they were never fetched."""
    return "\n\n".join(
        f'File "{name(f)}" ({size(f):,} bytes, {f.get("mimetype") or "unknown type"}) was '
        f"attached but not passed on: {MISSED}."
        for f in files
    )
