"""Secrets kept off the pages: what the agent printed is shown, but not credentials in URLs
(executor/config/redact.py), not tokens of well-known formats, and not the values of this
installation's own secrets (the model's API key, Slack's tokens, every repo's `agent_env`
variables as this process sees them), which an agent that ran `env` or echoed its key
would otherwise put on a page anyone with the link can read."""

from __future__ import annotations

import re
from collections.abc import Iterable

from executor.config.redact import HIDDEN, redact

# Slack tokens, OpenAI/Anthropic-style keys, GitHub tokens, AWS access key ids, JWT-like
# bearer tokens: matched whole, so the rest of the line stays readable.
_TOKENS = re.compile(
    r"\b(?:xox[abposr]-[A-Za-z0-9-]{10,}|xapp-[A-Za-z0-9-]{10,}|sk-[A-Za-z0-9_-]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|AKIA[0-9A-Z]{16}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})"
)
MIN_SECRET = 8  # shorter values would blank out ordinary words


class Redactor:
    def __init__(self, values: Iterable[str | None] = ()) -> None:
        kept = sorted({v for v in values if v and len(v) >= MIN_SECRET}, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, kept))) if kept else None

    def __call__(self, text: object) -> str:
        out = _TOKENS.sub(HIDDEN, redact(str(text)))
        return self._values.sub(HIDDEN, out) if self._values else out
