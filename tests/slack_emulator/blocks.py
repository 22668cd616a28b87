"""Block Kit limits Slack enforces, answered as Slack answers them: `invalid_blocks` with
`response_metadata.messages` like "[ERROR] must be less than 3001 characters
[json-pointer:/blocks/0/text/text]". Only the limits a bot is likely to hit are checked."""

from __future__ import annotations

from typing import Any

from tests.slack_emulator.model import ApiError

MESSAGE_BLOCKS = 50
VIEW_BLOCKS = 100
SECTION_TEXT = 3000
SECTION_FIELDS, FIELD_TEXT = 10, 2000
HEADER_TEXT = 150
BUTTON_TEXT, BUTTON_VALUE = 75, 2000
ACTIONS_ELEMENTS, CONTEXT_ELEMENTS = 25, 10
ID_LENGTH = 255
VIEW_TITLE = 24
MESSAGE_TEXT = 40_000


def check_blocks(blocks: Any, *, limit: int = MESSAGE_BLOCKS, at: str = "/blocks") -> None:
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ApiError("invalid_blocks_format")
    problems = _problems(blocks, limit, at)
    if problems:
        messages = [f"[ERROR] {what} [json-pointer:{where}]" for what, where in problems]
        error = "invalid_arguments" if at.startswith("/view") else "invalid_blocks"
        raise ApiError(error, response_metadata={"messages": messages})


def _problems(blocks: list[dict[str, Any]], limit: int, at: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if len(blocks) > limit:
        found.append((f"no more than {limit} items allowed", at))
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        here = f"{at}/{i}"
        kind = block.get("type")
        if not kind:
            found.append(("missing required field: type", here))
        block_id = block.get("block_id")
        if block_id is not None:
            found += _length(block_id, ID_LENGTH, f"{here}/block_id")
            if block_id in block_ids:
                found.append((f"duplicate block_id {block_id!r}", f"{here}/block_id"))
            block_ids.add(block_id)
        if kind == "section":
            if "text" not in block and "fields" not in block:
                found.append(("must provide `text` or `fields`", here))
            found += _text(block.get("text"), SECTION_TEXT, f"{here}/text")
            fields = block.get("fields") or []
            if len(fields) > SECTION_FIELDS:
                found.append((f"no more than {SECTION_FIELDS} items allowed", f"{here}/fields"))
            for j, item in enumerate(fields):
                found += _text(item, FIELD_TEXT, f"{here}/fields/{j}")
            found += _element(block.get("accessory"), f"{here}/accessory")
        elif kind == "header":
            found += _text(block.get("text"), HEADER_TEXT, f"{here}/text")
        elif kind in ("actions", "context"):
            most = ACTIONS_ELEMENTS if kind == "actions" else CONTEXT_ELEMENTS
            elements = block.get("elements") or []
            if len(elements) > most:
                found.append((f"no more than {most} items allowed", f"{here}/elements"))
            action_ids = [e.get("action_id") for e in elements if e.get("action_id")]
            if len(action_ids) != len(set(action_ids)):
                found.append(("action_ids must be unique in a block", f"{here}/elements"))
            for j, element in enumerate(elements):
                found += _element(element, f"{here}/elements/{j}")
    return found


def _element(element: dict[str, Any] | None, at: str) -> list[tuple[str, str]]:
    if element and element.get("type") in ("mrkdwn", "plain_text"):  # in a context block
        return _text(element, SECTION_TEXT, at)
    if not element or element.get("type") != "button":
        return []
    found = _text(element.get("text"), BUTTON_TEXT, f"{at}/text")
    found += _length(element.get("value"), BUTTON_VALUE, f"{at}/value")
    return found + _length(element.get("action_id"), ID_LENGTH, f"{at}/action_id")


def _text(obj: Any, most: int, at: str) -> list[tuple[str, str]]:
    if obj is None:
        return []
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        return [("must be a text object", at)]
    if not text:
        return [("must be more than 0 characters", f"{at}/text")]
    return _length(text, most, f"{at}/text")


def _length(value: Any, most: int, at: str) -> list[tuple[str, str]]:
    if isinstance(value, str) and len(value) > most:
        return [(f"must be less than {most + 1} characters", at)]
    return []
