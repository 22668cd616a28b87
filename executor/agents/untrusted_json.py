"""JSON from the model endpoint and from agents: untrusted text. `json.loads` raises
RecursionError, not ValueError, for nesting deeper than the interpreter's stack (about a
thousand levels): an answer like `{"a":{"a":…` would escape every `except ValueError` meant
for malformed input and end the run as a bug. Here it is malformed input like any other."""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
