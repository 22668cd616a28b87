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
    """`text` with the user part of every URL in it, and every registered secret, replaced
    by ***."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return _USERINFO.sub(rf"\g<1>{HIDDEN}@", text)


# Secret values this process holds (forge tokens): `redact` removes them from any text, so an
# error that quotes a request or a forge's answer cannot carry one out. Kept as long as the
# process lives; only values of a useful length, so "a" never blanks every "a".
_SECRETS: set[str] = set()
MIN_SECRET_CHARS = 8


def register_secret(value: str | None) -> None:
    """From now on, `redact` replaces `value` wherever it appears."""
    if value and len(value) >= MIN_SECRET_CHARS:
        _SECRETS.add(value)
