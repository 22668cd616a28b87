"""Signed, expiring, read-only links: `/t/<task>` for one task's page, `/p/<plan>` for one
plan's page, `/review` for one person's review queue. The signature is an HMAC-SHA256 over
what the link grants (the page, the person it was made for, its expiry) with a secret only
this installation has, so a link cannot be widened to another task (or a plan), extended, or
made up; nothing in it is secret itself.

The secret is a file under NIGHTCREW_HOME (`web-secret`, mode 0600), made by `nightcrew
init`/`doctor` or on first use; removing it revokes every link given out."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

SECRET_FILE = "web-secret"
DEFAULT_TTL_S = 7 * 24 * 3600


def secret_path(home: Path) -> Path:
    return home / SECRET_FILE


def ensure_secret(home: Path) -> bytes:
    """The installation's link secret, made now (0600, never overwritten) if missing. Two
    processes racing here both end up with the one that was written first."""
    path = secret_path(home)
    home.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    value = path.read_text().strip()
    if len(value) < 32:
        raise ValueError(f"{path} holds no usable secret; remove it to make a new one")
    return value.encode()


def secret_mode_ok(home: Path) -> bool:
    path = secret_path(home)
    return path.is_file() and (path.stat().st_mode & 0o077) == 0


@dataclass(frozen=True)
class Grant:
    """What a verified link allows: reading `page` ("task:<id>", "plan:<id>" or "review")
    as `user`."""

    page: str
    user: str
    expires: int

    @property
    def task_id(self) -> int | None:
        kind, _, rest = self.page.partition(":")
        return int(rest) if kind == "task" and rest.isdigit() else None


@dataclass(frozen=True)
class Signer:
    secret: bytes
    public_url: str = "http://127.0.0.1:8780"
    ttl_s: int = DEFAULT_TTL_S

    @classmethod
    def from_settings(cls, settings: Any) -> Signer:
        """From `executor.config.settings.Settings`: the secret under its home, its public
        URL (else the local address the pages are served at) and link lifetime."""
        port = settings.web_port if settings.web_port > 0 else 8780
        url = settings.public_url or f"http://{settings.web_host}:{port}"
        ttl = int(settings.link_ttl_days * 24 * 3600)
        return cls(ensure_secret(settings.home), url, ttl)

    def _mac(self, page: str, user: str, expires: int) -> str:
        message = f"nightcrew-link-v1\n{page}\n{user}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def query(
        self, page: str, user: str, *, now: float | None = None, expires: int | None = None
    ) -> str:
        """`expires`: no later than this (a link handed out by a page expires with it)."""
        until = int((now if now is not None else time.time()) + self.ttl_s)
        expires = until if expires is None else min(expires, until)
        return urlencode({"u": user, "e": expires, "s": self._mac(page, user, expires)})

    def task_url(self, task_id: int, user: str, *, now: float | None = None) -> str:
        return f"{self.base}/t/{task_id}?{self.query(f'task:{task_id}', user, now=now)}"

    def plan_url(self, plan_id: int, user: str, *, now: float | None = None) -> str:
        return f"{self.base}/p/{plan_id}?{self.query(f'plan:{plan_id}', user, now=now)}"

    def review_url(self, user: str, *, now: float | None = None) -> str:
        return f"{self.base}/review?{self.query('review', user, now=now)}"

    @property
    def base(self) -> str:
        return self.public_url.rstrip("/")

    def verify(
        self, page: str, params: dict[str, str], *, now: float | None = None
    ) -> Grant | None:
        """The grant a link's parameters carry for `page`, or None: wrong signature, another
        page's, altered user or expiry, expired, or malformed."""
        user, expires, mac = params.get("u", ""), params.get("e", ""), params.get("s", "")
        if not (user and expires.isdigit() and len(expires) < 16 and len(mac) == 64):
            return None
        if not hmac.compare_digest(self._mac(page, user, int(expires)), mac):
            return None
        if int(expires) < (now if now is not None else time.time()):
            return None
        return Grant(page, user, int(expires))
