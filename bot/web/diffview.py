"""A unified diff (git's) made into files of numbered, highlighted lines for the task page.

The diff is agent-written text: every line reaches the page either as Pygments' output
(which escapes what it formats) or escaped by us, never as markup of its own. Lexers are
picked by file name only (no content sniffing: `guess_lexer` is slow and agent-steerable).

Pygments takes about 0.1 ms a line, so a page highlights at most `INLINE_LINES` (200) code lines
itself (small diffs: all of them); the files past that are shown plain (escaped, still
numbered and coloured by +/-) and highlighted one at a time when the page asks for them
(`highlight_file`, the task page's `/file/<n>` fragment). Both are remembered per diff event."""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
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
INLINE_LINES = 200  # code lines a page highlights while it renders (~20-50 ms of Pygments)


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
    highlighted: bool = False  # False: shown plain, the page fetches its highlighted rows
    raw: list[tuple[str, int | None, int | None, str]] = field(default_factory=list, repr=False)

    @property
    def code_lines(self) -> int:
        return sum(1 for kind, _, _, _ in self.raw if kind in ("add", "del", "ctx"))

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


def parse(diff: str, *, budget: int | None = None) -> list[FileDiff]:
    """Split a `git diff` into files; lines keep their old/new numbers. Files are highlighted
    in order while their code lines fit in `budget` (None: all of them), the rest plain."""
    files: list[FileDiff] = []
    current: FileDiff | None = None
    raw: list[tuple[str, int | None, int | None, str]] = []
    old = new = 0
    left = [budget]

    def close() -> None:
        if current is not None:
            current.raw = list(raw)
            code = current.code_lines
            fits = left[0] is None or code <= left[0]
            if fits and left[0] is not None:
                left[0] -= code
            _render(current, coloured=fits)
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


def _render(file: FileDiff, *, coloured: bool = True) -> None:
    """Highlight the file's code lines in one Pygments pass (the lexer sees them in order,
    old and new mixed: good enough to colour, far cheaper than a pass per line); or, with
    `coloured` False, escape them only. Replaces the file's lines in one assignment, so a
    page rendering from another thread sees either the old rows or the new ones."""
    raw = file.raw
    code = [text for kind, _, _, text in raw if kind in ("add", "del", "ctx")]
    if coloured and code and len(code) <= HIGHLIGHT_MAX_LINES:
        out = highlight("\n".join(code) + "\n", _lexer(file.path), _FORMATTER).split("\n")
        html = [Markup(h) for h in out[: len(code)]]
        if len(html) != len(code):  # a lexer that merged lines: fall back to plain
            html = [escape(t) for t in code]
    else:
        html = [escape(t) for t in code]
    it = iter(html)
    lines: list[Line] = []
    for kind, old, new, text in raw:
        shown = next(it) if kind in ("add", "del", "ctx") else escape(text)
        lines.append(Line(kind, old, new, Markup(shown)))
        if new is not None and kind != "del":
            file.new_lines.add(new)
    file.lines = lines
    file.highlighted = coloured


def key_of(event_id: int, diff: str) -> tuple[int, str]:
    """What a diff's files are remembered by: its event's id and a hash of its text (events
    never change; the hash keeps two databases' event 7 apart, ~2 ms for 2 MB)."""
    return event_id, hashlib.blake2b(diff.encode(errors="replace"), digest_size=16).hexdigest()


class _Remembered:
    """The files of the newest diffs, by `key_of`, shared by the threads serving pages."""

    def __init__(self, size: int = 32) -> None:
        self.size, self.lock = size, threading.Lock()
        self.items: OrderedDict[tuple[int, str], list[FileDiff]] = OrderedDict()

    def get(self, key: tuple[int, str]) -> list[FileDiff] | None:
        with self.lock:
            files = self.items.get(key)
            if files is not None:
                self.items.move_to_end(key)
            return files

    def put(self, key: tuple[int, str], files: list[FileDiff]) -> list[FileDiff]:
        with self.lock:
            self.items[key] = files
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
            return files


_remembered = _Remembered()


def parse_cached(key: tuple[int, str], diff: str) -> list[FileDiff]:
    """Every file highlighted, remembered by `key` (the warmer's way: a diff highlighted off
    any request, as soon as it is recorded)."""
    files = _remembered.get(key)
    if files is not None and all(f.highlighted for f in files):
        return files
    return _remembered.put(key, parse(diff))


def for_page(key: tuple[int, str], diff: str) -> list[FileDiff]:
    """The files a page shows now: as remembered (highlighted by the warmer or by earlier
    fragment requests), else parsed with at most `INLINE_LINES` lines highlighted."""
    files = _remembered.get(key)
    if files is not None:
        return files
    return _remembered.put(key, parse(diff, budget=INLINE_LINES))


def highlight_file(key: tuple[int, str], diff: str, index: int) -> FileDiff | None:
    """File `index` of the diff, highlighted now if it was shown plain (None: no such file)."""
    files = for_page(key, diff)
    if not 0 <= index < len(files):
        return None
    file = files[index]
    if not file.highlighted:
        _render(file, coloured=True)
    return file


def css() -> str:
    """Pygments' colours for the page, scoped to the diff blocks."""
    return _FORMATTER.get_style_defs(".code")
