"""Which installation a database belongs to: its random id, made by its migration."""

from __future__ import annotations

import hashlib
from weakref import WeakKeyDictionary

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import select

from storage.db import reading
from storage.models import Installation

_installations: WeakKeyDictionary[Engine, str] = WeakKeyDictionary()


def installation_id(engine: Engine) -> str:
    """This database's random id (made by its migration), so executors of other installations
    sharing a Docker engine (or a test run) never touch each other's sandboxes, and each
    installation's Slack deliveries are its own. A database that has none yet (not migrated)
    is named by a hash of its URL, as before."""
    known = _installations.get(engine)
    if known is None:
        try:
            with reading(engine) as s:
                known = s.exec(select(Installation.id)).first()
        except SQLAlchemyError:  # no such table: not migrated
            known = None
        url = engine.url.render_as_string(hide_password=True)
        known = known or hashlib.sha256(url.encode()).hexdigest()[:8]
        _installations[engine] = known
    return known
