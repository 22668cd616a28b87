"""Schema migrations (Alembic): every process brings the database to the newest schema at
start, one at a time, inside one transaction.

The lock: on PostgreSQL a transaction-scoped advisory lock; on SQLite the write lock that
`BEGIN IMMEDIATE` takes (storage/db.py). Whoever waited finds the schema already at head and
does nothing. A database made by the release before migrations (tables, no `alembic_version`)
is stamped as the baseline revision, never re-created.

Alembic is imported only when the schema must change (or a revision is unknown): the usual
start (already at head) reads `alembic_version` and the revision files' headers, which keeps
every process's start, `nightcrew add` among them, a few hundred milliseconds shorter."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from storage.errors import SchemaTooNew

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).parent / "migrations"
# The schema `create_all` made before migrations existed.
BASELINE = "0001"
# Any constant shared by every nightcrew process: the advisory lock's key (a bigint).
_PG_LOCK_KEY = 0x6E63_6D69_6772_6174  # "ncmigrat"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config, from code (no ini file needed at run time); env.py uses
    `connection` when given."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


_REVISION = re.compile(r"^revision(?::[^=]*)? = \"([^\"]+)\"", re.M)
_DOWN = re.compile(r"^down_revision(?::[^=]*)? = \"([^\"]+)\"", re.M)


@cache
def head() -> str:
    """The newest revision: the one no other revision file names as its `down_revision`
    (read as text; Alembic's own reading when that is not one clear answer)."""
    revisions, downs = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text()
        found = _REVISION.search(source)
        if found is None:
            return _alembic_head()
        revisions.add(found[1])
        downs.update(_DOWN.findall(source))
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else _alembic_head()


def _alembic_head() -> str:
    rev = _script().get_current_head()
    assert rev is not None
    return rev


def is_known(rev: str) -> bool:
    """False for a revision a newer release wrote: this code has no script for it."""
    return rev in {s.revision for s in _script().walk_revisions()}


def _known(rev: str | None) -> None:
    """Refuse to run on a newer release's schema rather than fail in the middle of a task."""
    if rev is not None and not is_known(rev):
        raise SchemaTooNew(rev, head())


def current(conn: Connection) -> str | None:
    """The database's revision (None: not migrated yet), as Alembic keeps it."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> bool:
    """Bring the schema to head; True if this call changed it."""
    with engine.connect() as conn:  # the common case: already there, no lock taken
        rev = current(conn)
        conn.rollback()
    if rev == head():
        return False
    _known(rev)
    with engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, the write lock until commit
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
        rev = current(conn)  # again, under the lock: someone may have migrated meanwhile
        if rev == head():
            return False
        from alembic import command

        cfg = alembic_config(conn)
        if rev is None and inspect(conn).has_table("task"):
            command.stamp(cfg, BASELINE)  # made by create_all before migrations existed
        command.upgrade(cfg, "head")
    return True
