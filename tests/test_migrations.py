"""Schema migrations: the baseline revision is exactly what the release before migrations
made; a database of that release is upgraded with every row intact; models and migrations
never drift apart; processes starting together migrate once. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel

from storage.db import make_engine, normalize_url, transaction
from storage.errors import SchemaTooNew
from storage.lifecycle import State
from storage.migrate import BASELINE, alembic_config, current, head
from storage.queue import claim_next
from storage.spend import Spent, spent_by_repo
from storage.tasks import add_nudge, events, get_task, nudges
from tests.conftest import PG_ADMIN_URL, need
from tests.old_release import TABLES, dump

ROOT = Path(__file__).parent.parent
RELEASES = Path(__file__).parent / "releases"
# The last commit of the release before migrations that touched storage/: its create_all
# made the databases the baseline revision must recognise.
OLD_RELEASE = "b69bec8a825aaa12c1d42af53a9aacf01c09b660"
# main with costs and budgets but before migrations: its create_all already made what 0003
# adds (such databases are stamped 0001 all the same).
BUDGETS_BEFORE_MIGRATIONS = "7c4b67b345ef3a7ce14ff7d693a20bf66ff3d98c"
# ...and with digests and schedules too (what 0004 adds).
DIGESTS_BEFORE_MIGRATIONS = "6e963c8a7c44d9d47b431ba541ff266c9b031eed"

BlankDB = Callable[[], str]


def storage_at(commit: str, root: Path) -> Path:
    """The storage package as it was at `commit`, under `root`: from the frozen archive in
    tests/releases (made by `git archive --format=tar.gz -o ... COMMIT storage`), so the test
    does not need the clone's history (CI may clone shallow)."""
    root.mkdir(parents=True, exist_ok=True)
    archive = RELEASES / f"storage-{commit[:7]}.tar.gz"
    assert archive.is_file(), f"{archive} is missing"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root


@pytest.fixture(scope="session")
def old_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return storage_at(OLD_RELEASE, tmp_path_factory.mktemp("old-release"))


def run_old(old_storage: Path, *args: str) -> str:
    """Python with the old storage package in place of today's."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=old_storage,
        env={"PYTHONPATH": str(old_storage), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlankDB]:
    """Makes empty databases: SQLite files, or fresh PostgreSQL databases dropped after."""
    made: list[str] = []
    admin: Engine | None = None
    if request.param == "postgresql":
        admin = create_engine(normalize_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text("select 1"))
        except Exception as exc:
            need("PostgreSQL", f"{PG_ADMIN_URL}: {exc.__class__.__name__}")

    def make() -> str:
        name = f"nightcrew_mig_{uuid.uuid4().hex[:10]}"
        if admin is None:
            return f"sqlite:///{tmp_path / name}.db"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        made.append(name)
        return normalize_url(PG_ADMIN_URL).rsplit("/", 1)[0] + f"/{name}"

    yield make
    if admin is not None:
        with admin.connect() as conn:
            for name in made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def schema(url: str) -> dict[str, Any]:
    """Tables as the database itself describes them: columns with their SQL types,
    nullability and defaults, primary and foreign keys, indexes."""
    engine = create_engine(normalize_url(url))
    with engine.connect() as conn:
        insp = inspect(conn)
        tables = {}
        for table in sorted(set(insp.get_table_names()) - {"alembic_version"}):
            tables[table] = {
                "columns": [
                    (c["name"], str(c["type"].compile(conn.dialect)), c["nullable"], c["default"])
                    for c in insp.get_columns(table)
                ],
                "pk": insp.get_pk_constraint(table)["constrained_columns"],
                "fks": sorted(
                    (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"])
                    for fk in insp.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (ix["name"], ix["column_names"], ix["unique"]) for ix in insp.get_indexes(table)
                ),
            }
    engine.dispose()
    return tables


def test_the_baseline_revision_is_exactly_the_old_releases_schema(
    blank_db: BlankDB, old_storage: Path
) -> None:
    old = blank_db()
    run_old(old_storage, "-c", f"from storage.db import make_engine; make_engine({old!r})")
    baseline = blank_db()
    engine = make_engine(baseline, create=False)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), BASELINE)
    engine.dispose()
    made_by_create_all = schema(old)
    assert set(made_by_create_all) == set(TABLES)
    assert schema(baseline) == made_by_create_all


def test_models_and_migrations_do_not_drift(engine: Engine) -> None:
    """Adding a column (or table, index, type change) to storage/models.py without a
    migration fails here; `uv run alembic revision --autogenerate` writes the migration."""
    with engine.connect() as conn:
        assert current(conn) == head()
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    assert diff == [], "models changed without a migration (see docs/ARCHITECTURE.md)"
    assert len(ScriptDirectory.from_config(alembic_config()).get_heads()) == 1


@pytest.mark.parametrize(
    "release", [OLD_RELEASE, BUDGETS_BEFORE_MIGRATIONS, DIGESTS_BEFORE_MIGRATIONS]
)
def test_an_old_releases_database_is_upgraded_with_every_row_intact(
    blank_db: BlankDB, release: str, tmp_path: Path
) -> None:
    url = blank_db()
    old = storage_at(release, tmp_path / "old-release")
    before = json.loads(run_old(old, str(ROOT / "tests" / "old_release.py"), url))
    assert {t["state"] for t in before["task"]} >= {"merged", "failed", "needs_input", "queued"}

    engine = make_engine(url)  # today's start: stamps the baseline, then upgrades
    with engine.connect() as conn:
        assert current(conn) == head()
        old_columns = {t: list(before[t][0]) for t in TABLES}
        assert dump(conn, old_columns) == before  # not re-created: every row, every value
    with transaction(engine) as s:
        tasks = {t["id"]: get_task(s, t["id"]) for t in before["task"]}
        for row in before["task"]:
            assert tasks[row["id"]].state is State(row["state"])
            logged = events(s, row["id"])
            assert [e.id for e in logged] == [
                e["id"] for e in before["taskevent"] if e["task_id"] == row["id"]
            ]
        waiting = next(t for t in tasks.values() if t.state is State.NEEDS_INPUT)
        assert [n.text for n in nudges(s, waiting.id or 0)] == ["use the other API"]
        merged = next(t for t in tasks.values() if t.state is State.MERGED)
        assert merged.merge_commit == "c" * 40 and merged.thread_ts == "111.1"
        assert merged.created_at.tzinfo is not None
        # Its cost, exact now, and in the ledger on the day it was spent (0003).
        assert merged.cost_nanos == 12_300_000
        assert merged.finished_at is not None
        day = merged.finished_at - timedelta(hours=1), merged.finished_at + timedelta(hours=1)
        if release == OLD_RELEASE:
            assert spent_by_repo(s, *day) == {"app": Spent(12_300_000, 0)}
        running = next(t for t in tasks.values() if t.state is State.RUNNING)
        assert running.executor == running.worker_id == "old-exec/0"  # filled in by 0002
        # And today's code works on it: the most urgent queued task is claimed next.
        claimed = claim_next(s, "new-exec/0")
        assert claimed is not None and claimed.prompt == "queued, high priority"
        assert claimed.executor == "new-exec/0"
    engine.dispose()


def test_processes_starting_together_migrate_once(blank_db: BlankDB) -> None:
    url = blank_db()
    code = "import sys; from storage.db import make_engine; make_engine(sys.argv[1])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    engine = make_engine(url, create=False)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [(head(),)]
    engine.dispose()
    assert schema(url).keys() == {t.name for t in SQLModel.metadata.sorted_tables}


def test_the_wheel_ships_the_migrations(tmp_path: Path) -> None:
    import shutil
    import zipfile

    uv = shutil.which("uv")
    if uv is None:
        need("uv", "not on PATH")
    subprocess.run(
        [uv, "build", "--wheel", "-q", "-o", str(tmp_path)], cwd=ROOT, check=True, timeout=120
    )
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "storage/migrations"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert "storage/migrations/env.py" in tracked
    assert set(tracked) <= shipped


def test_a_database_migrated_by_a_newer_release_is_refused_clearly(engine: Engine) -> None:
    future = text("UPDATE alembic_version SET version_num = :v")
    with engine.begin() as conn:
        conn.execute(future, {"v": "9999_from_the_future"})
    try:
        with pytest.raises(SchemaTooNew, match=r"revision 9999_from_the_future.*upgrade this"):
            make_engine(engine.url.render_as_string(hide_password=False))
    finally:  # the PostgreSQL database is shared by the session's tests
        with engine.begin() as conn:
            conn.execute(future, {"v": head()})


def test_0006_keeps_one_nudge_per_slack_reply(blank_db: BlankDB) -> None:
    """An older release could store one Slack reply twice (two deliveries at once); the
    upgrade keeps the earliest and then lets no second one in."""
    url = blank_db()
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0005")
        conn.execute(
            text(
                "INSERT INTO task (repo, prompt, state, priority, requester, source, created_at,"
                " updated_at, attempts, turns, tokens_in, tokens_out, cost_usd, cost_nanos,"
                " unpriced_tokens) VALUES ('app', 'p', 'running', 1, 'U1', 'slack',"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0, 0, 0, 0, 0, 0, 0)"
            )
        )
        for text_, ts in [("first", "1.1"), ("again", "1.1"), ("other", "2.2"), ("cli", None)]:
            for _ in range(2 if ts is None else 1):  # terminal nudges have no ts: never dupes
                conn.execute(
                    text(
                        "INSERT INTO nudge (task_id, text, author, source, slack_ts, created_at)"
                        " VALUES (1, :t, 'U1', 'slack', :ts, CURRENT_TIMESTAMP)"
                    ),
                    {"t": text_, "ts": ts},
                )
    engine.dispose()
    engine = make_engine(url)  # migrates to head
    with engine.connect() as conn:
        left = conn.execute(text("SELECT text FROM nudge ORDER BY id")).scalars().all()
    assert left == ["first", "other", "cli", "cli"]
    with pytest.raises(IntegrityError), transaction(engine) as s:
        add_nudge(s, 1, text="third delivery", author="U1", source="slack", slack_ts="1.1")
    engine.dispose()
