"""Real Slack payloads (from Slack's own SDK repositories) kept in this folder, by file name.

    payload = load_json("socket_slash_commands.json")["payload"]
    body = load_text("slash_command.txt")

Where each file came from: SOURCES.md in the same folder. Every call returns a fresh copy, so a
test may change what it gets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SAMPLES_DIR = Path(__file__).resolve().parent  # copied from Slack's repositories (SOURCES.md)


def sample_path(name: str) -> Path:
    path = SAMPLES_DIR / name
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in SAMPLES_DIR.glob("*.json")))
        raise FileNotFoundError(f"no Slack sample {name!r} in {SAMPLES_DIR}; there are: {known}")
    return path


def load_text(name: str) -> str:
    return sample_path(name).read_text(encoding="utf-8")


def load_json(name: str) -> Any:
    return json.loads(load_text(name))
