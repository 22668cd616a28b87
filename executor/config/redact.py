"""Credentials out of text that leaves the host: `scheme://user:password@host` and
`scheme://token@host` become `scheme://***@host`.

Used where text leaves a layer that handles URLs with credentials in them: every message of
host-side git (executor/git/safe.py: its command line and git's own words), and database
URLs the CLI prints. A URL's user part may hold a token on its own (GitHub's
`https://<token>@github.com/...`), so the whole user part goes, not only a password."""

from __future__ import annotations

import re

# scheme://, then everything up to the last "@" before the host (no "/", space or quote):
# a password may itself hold an unescaped "@".
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s'\"<>]*@")
HIDDEN = "***"


def redact(text: str) -> str:
    """`text` with the user part of every URL in it replaced by ***."""
    return _USERINFO.sub(rf"\g<1>{HIDDEN}@", text)
