"""Schema migrations (Alembic): every process brings the database to the newest schema at
start, one at a time, inside one transaction.

The lock: on PostgreSQL a transaction-scoped advisory lock; on SQLite the write lock that
`BEGIN IMMEDIATE` takes (storage/db.py). Whoever waited finds the schema already at head and
does nothing. A database made by the release before migrations (tables, no `alembic_version`)
is stamped as the baseline revision, never re-created."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from storage.errors import SchemaTooNew

MIGRATIONS = Path(__file__).parent / "migrations"
# The schema `create_all` made before migrations existed.
BASELINE = "0001"
# Any constant shared by every nightcrew process: the advisory lock's key (a bigint).
_PG_LOCK_KEY = 0x6E63_6D69_6772_6174  # "ncmigrat"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config, from code (no ini file needed at run time); env.py uses
    `connection` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
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
    return MigrationContext.configure(conn).get_current_revision()


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
        cfg = alembic_config(conn)
        if rev is None and inspect(conn).has_table("task"):
            command.stamp(cfg, BASELINE)  # made by create_all before migrations existed
        command.upgrade(cfg, "head")
    return True
