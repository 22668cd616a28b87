"""Untrusted text, made safe to store: what models, agents and people write (summaries,
questions, file names, check output, findings, prompts, nudges) loses its control characters
on the way into the database. NUL would be refused by PostgreSQL (and fail the task that
wrote it); escape sequences would reach terminals that show the text later. Newlines and tabs
stay. Lone surrogates go too: no database can encode them.

The column types below do it for every text and JSON column of every table (`storage.models`
puts them on all of them), so no writer can forget: an INSERT or UPDATE through SQLAlchemy,
ORM or Core, passes every value through `process_bind_param`."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import JSON, String, Text, TypeDecorator

# C0 controls but tab and newline, DEL, C1 controls, surrogates.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def clean(text: str) -> str:
    """`text` without control characters (tabs and newlines kept)."""
    return _CONTROL.sub("", text)


def clean_value(value: Any) -> Any:
    """`clean` applied to every string in a JSON-like value, keys included."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean_value(k): clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_value(v) for v in value]
    return value


class CleanString(TypeDecorator[str]):
    """VARCHAR whose values are `clean`ed on the way in."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return clean(value) if isinstance(value, str) else value


class CleanText(CleanString):
    """TEXT whose values are `clean`ed on the way in."""

    impl = Text
    cache_ok = True


class CleanJSON(TypeDecorator[Any]):
    """JSON whose strings are `clean`ed on the way in."""

    impl = JSON
    cache_ok = True

    @property
    def comparator_factory(self) -> Any:  # type: ignore[override]
        return self.impl_instance.comparator_factory  # payload["key"] still works

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return clean_value(value)
