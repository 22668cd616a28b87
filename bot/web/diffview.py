"""A unified diff (git's) made into files of numbered, highlighted lines for the task page.

The diff is agent-written text: every line reaches the page either as Pygments' output
(which escapes what it formats) or escaped by us, never as markup of its own. Lexers are
picked by file name only (no content sniffing: `guess_lexer` is slow and agent-steerable)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from markupsafe import Markup, escape
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound

_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$")
_FORMATTER = HtmlFormatter(nowrap=True)
HIGHLIGHT_MAX_LINES = 20_000  # beyond this a file's lines are shown plain (still escaped)


@dataclass
class Line:
    kind: str  # "add", "del", "ctx", "hunk", "note"
    old: int | None
    new: int | None
    html: Markup


@dataclass
class FileDiff:
    index: int
    path: str
    old_path: str
    added: int = 0
    removed: int = 0
    binary: bool = False
    lines: list[Line] = field(default_factory=list)
    new_lines: set[int] = field(default_factory=set)  # line numbers shown on the new side

    @property
    def anchor(self) -> str:
        return f"f{self.index}"

    def table(self, prefix: str) -> Markup:
        """The file's rows as one block of HTML, built here rather than in the template:
        5,000 rows cost a tenth of the time. Every piece is Pygments' output or escaped."""
        rows = []
        sign = {"add": "+", "del": "-", "ctx": " "}
        for ln in self.lines:
            anchor = (
                f' id="{prefix}{self.anchor}-n{ln.new}"'
                if ln.new is not None and ln.kind != "del"
                else ""
            )
            old = "" if ln.old is None else ln.old
            new = "" if ln.new is None else ln.new
            rows.append(
                f'<tr class="{ln.kind}"{anchor}><td class="n">{old}</td><td class="n">{new}'
                f"</td><td>{sign.get(ln.kind, '')}{ln.html}</td></tr>"
            )
        return Markup("<table>" + "".join(rows) + "</table>")


@lru_cache(maxsize=256)
def _lexer(path: str) -> Lexer:
    try:
        return get_lexer_for_filename(path.rsplit("/", 1)[-1], stripnl=False, ensurenl=False)
    except ClassNotFound:
        return TextLexer(stripnl=False, ensurenl=False)


def _unquote(path: str) -> str:
    """git quotes odd names ("a/\\303\\251.txt"); shown as written, escaped later."""
    if len(path) >= 2 and path[0] == path[-1] == '"':
        path = path[1:-1]
    return path[2:] if path[:2] in ("a/", "b/") else path


def parse(diff: str) -> list[FileDiff]:
    """Split a `git diff` into files; lines keep their old/new numbers."""
    files: list[FileDiff] = []
    current: FileDiff | None = None
    raw: list[tuple[str, int | None, int | None, str]] = []
    old = new = 0

    def close() -> None:
        if current is not None:
            _render(current, raw)
            raw.clear()

    for line in diff.split("\n"):
        if line.startswith("diff --git "):
            close()
            parts = line[len("diff --git ") :].split(" b/", 1)
            old_path = _unquote(parts[0])
            path = parts[1] if len(parts) == 2 else old_path
            current = FileDiff(len(files), _unquote("b/" + path), old_path)
            files.append(current)
            continue
        if current is None:
            continue
        if line.startswith("+++ ") and not raw:
            target = line[4:]
            if target != "/dev/null":
                current.path = _unquote(target)
            continue
        if line.startswith("--- ") and not raw:
            continue
        match = _HUNK.match(line)
        if match:
            old, new = int(match[1]), int(match[2])
            raw.append(("hunk", None, None, line))
            continue
        if not raw:  # headers: index, mode, rename, "Binary files … differ"
            if line.startswith("Binary files"):
                current.binary = True
                raw.append(("note", None, None, "binary file: not shown"))
            continue
        if line.startswith("+"):
            raw.append(("add", None, new, line[1:]))
            new += 1
            current.added += 1
        elif line.startswith("-"):
            raw.append(("del", old, None, line[1:]))
            old += 1
            current.removed += 1
        elif line.startswith(" "):
            raw.append(("ctx", old, new, line[1:]))
            old, new = old + 1, new + 1
        elif line.startswith("\\"):
            raw.append(("note", None, None, line))
    close()
    return files


def _render(file: FileDiff, raw: list[tuple[str, int | None, int | None, str]]) -> None:
    """Highlight the file's code lines in one Pygments pass (the lexer sees them in order,
    old and new mixed: good enough to colour, far cheaper than a pass per line)."""
    code = [text for kind, _, _, text in raw if kind in ("add", "del", "ctx")]
    if code and len(code) <= HIGHLIGHT_MAX_LINES:
        out = highlight("\n".join(code) + "\n", _lexer(file.path), _FORMATTER).split("\n")
        html = [Markup(h) for h in out[: len(code)]]
        if len(html) != len(code):  # a lexer that merged lines: fall back to plain
            html = [escape(t) for t in code]
    else:
        html = [escape(t) for t in code]
    it = iter(html)
    for kind, old, new, text in raw:
        shown = next(it) if kind in ("add", "del", "ctx") else escape(text)
        file.lines.append(Line(kind, old, new, Markup(shown)))
        if new is not None and kind != "del":
            file.new_lines.add(new)


@lru_cache(maxsize=32)
def parse_cached(key: tuple[int, int], diff: str) -> list[FileDiff]:
    """`parse` remembered by `key` (the diff event's id and length: events never change), so
    a page viewed again, or polled, does not highlight the same diff twice."""
    del key
    return parse(diff)


def css() -> str:
    """Pygments' colours for the page, scoped to the diff blocks."""
    return _FORMATTER.get_style_defs(".code")
