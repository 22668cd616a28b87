"""A task's patch on a terminal: coloured like `git diff`, and safe to show.

The patch is the agent's text. Printed raw to a terminal, an escape sequence in a changed file
would clear the screen, retitle the window or fake lines of the diff; so every line goes
through `clean` (control characters dropped) and is coloured here, never by git. In a pipe the
CLI prints the patch byte for byte instead, for `git apply` (a CR in a CRLF file matters)."""

from __future__ import annotations

from rich.text import Text

from storage.text import clean

_STYLES = (
    ("diff --git ", "bold"),
    ("index ", "bold"),
    ("+++ ", "bold"),
    ("--- ", "bold"),
    ("@@", "cyan"),
    ("+", "green"),
    ("-", "red"),
)


def coloured(patch: bytes) -> Text:
    text = Text()
    for line in patch.decode("utf-8", "replace").splitlines():
        safe = clean(line)
        style = next((s for prefix, s in _STYLES if safe.startswith(prefix)), "")
        text.append(safe + "\n", style=style)
    return text
