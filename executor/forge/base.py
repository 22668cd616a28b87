"""What nightcrew asks of a forge, whichever it is: the common shapes and the interface that
github.py and gitlab.py implement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, Self

from executor.config.redact import redact

PRState = Literal["open", "closed", "merged"]


class ForgeError(Exception):
    """The forge could not be reached or answered with an error; the text is scrubbed. Here,
    not in http.py, so what only matches issue URLs (every CLI command) needs no httpx."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(redact(message))
        self.status = status


class Refused(ForgeError):
    """The forge would not merge (required reviews or status checks, conflicts, a head that
    moved); the text is the forge's reason, for the card."""


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    state: PRState
    head_sha: str
    draft: bool
    merge_commit: str | None = None  # the commit the merge put on the base, once merged
    ref: str = ""  # GitHub's node id (GraphQL); GitLab: unused


@dataclass(frozen=True)
class Issue:
    number: int
    title: str
    body: str
    url: str


@dataclass(frozen=True)
class Comment:
    id: int
    author: str
    body: str


@dataclass(frozen=True)
class Access:
    ok: bool
    detail: str
    missing: list[str] = field(default_factory=list)  # scopes or permissions lacking


class Forge(Protocol):
    kind: str
    fixes_word: str  # how a PR body closes an issue: "Fixes #12"

    def find_pr(self, branch: str) -> PullRequest | None: ...

    def open_pr(self, *, branch: str, base: str, title: str, body: str) -> PullRequest: ...

    def update_pr(self, number: int, *, title: str, body: str) -> PullRequest: ...

    def get_pr(self, number: int) -> PullRequest: ...

    def mark_ready(self, pr: PullRequest) -> None: ...

    def merge_pr(self, number: int, *, sha: str, method: str, title: str) -> str: ...

    def close_pr(self, number: int) -> None: ...

    def comments(self, number: int) -> list[Comment]: ...

    def me(self) -> str: ...

    def issue(self, number: int) -> Issue: ...

    def check_access(self) -> Access: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
