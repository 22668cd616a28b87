"""Where the CLI's output goes: a person at a terminal, or a script at the end of a pipe.

On a terminal, rich renders tables and colour for the terminal's width. Anywhere else (a pipe,
a file, a CI log) every renderable is flattened to plain lines that never depend on the
terminal's width: one line per table row, cells separated by a tab, no padding, no colour, no
box characters, no wrapping and no `…`; a table's header is its first line unless the command
was given `--no-header`. So `nightcrew ls | grep word` finds a task on one line, and
`COLUMNS=40` and `COLUMNS=300` print the same bytes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text


class Output:
    """The console for stdout, with a plain path for scripts."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.header = True  # `--no-header` turns it off for one command

    @property
    def terminal(self) -> bool:
        return self.console.is_terminal

    def print(
        self, renderable: RenderableType, *, markup: bool = True, soft_wrap: bool = False
    ) -> None:
        """`soft_wrap`: on a terminal, never break the line (a link must stay whole)."""
        if isinstance(renderable, Table) and not self.header:
            renderable.show_header = False
        if self.terminal:
            self.console.print(renderable, markup=markup, soft_wrap=soft_wrap)
            return
        if isinstance(renderable, str):
            text = Text.from_markup(renderable) if markup else Text(renderable)
            self._write([text.plain])
        else:
            self._write(plain_lines(renderable, header=self.header))

    def json(self, data: Any) -> None:
        """One JSON document (indented on a terminal, one line in a pipe)."""
        indent = 2 if self.terminal else None
        self._write([json.dumps(data, indent=indent, ensure_ascii=False, default=str)])

    def verbatim(self, data: str | bytes) -> None:
        """Text or bytes exactly as given, never wrapped: our own (a manifest), or in a pipe
        only, untrusted bytes such as a patch for `git apply` (on a terminal a patch goes
        through `clean` first: escape sequences)."""
        file = self.console.file
        if isinstance(data, bytes):
            file.flush()
            file.buffer.write(data)  # type: ignore[attr-defined]  # a text stream's bytes
            file.buffer.flush()  # type: ignore[attr-defined]
        else:
            file.write(data)
        file.flush()

    def _write(self, lines: Iterable[str]) -> None:
        file = self.console.file
        for line in lines:
            file.write(line + "\n")
        file.flush()


def plain_lines(renderable: RenderableType, *, header: bool = True) -> Iterator[str]:
    """A renderable as lines of plain text, whatever the terminal's width."""
    if isinstance(renderable, Group):
        for part in renderable.renderables:
            yield from plain_lines(part, header=header)
    elif isinstance(renderable, Table):
        if header and renderable.show_header:
            yield "\t".join(_cell(c.header) for c in renderable.columns)
        for row in zip(*(c.cells for c in renderable.columns), strict=True):
            yield "\t".join(_cell(cell) for cell in row)
    elif isinstance(renderable, Text):
        yield from renderable.plain.splitlines() or [""]
    else:
        yield from str(renderable).splitlines() or [""]


def _cell(cell: RenderableType) -> str:
    """A table cell on one line: its own line breaks and tabs become spaces or `; ` (blank
    lines none: a paragraph break is no empty item)."""
    text = cell.plain if isinstance(cell, Text) else str(cell)
    lines = (line.replace("\t", " ").strip() for line in text.splitlines())
    return "; ".join(line for line in lines if line)
