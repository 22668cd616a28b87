"""Alembic's environment: at start storage.migrate hands us its connection (inside its lock
and transaction); the `alembic` command line (see alembic.ini) connects to
NIGHTCREW_DATABASE_URL itself."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite alters most things by copying the table: let autogenerate say so.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from storage.db import make_engine

    url = os.environ.get("NIGHTCREW_DATABASE_URL")
    if not url:
        raise SystemExit("set NIGHTCREW_DATABASE_URL to the database to migrate")
    engine = make_engine(url, create=False)
    with engine.begin() as conn:
        run(conn)
    engine.dispose()
