"""Migrations on SQLite and PostgreSQL: round trips, agreement with the models, refusal of newer schemas."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from registry.db import Database
from registry.errors import DatabaseError
from registry.migrate import current_revisions, downgrade, ensure_schema, head_revision, upgrade
from tests.conftest import REPO, run_cli


def _tables(db: Database) -> set[str]:
    return set(sa.inspect(db.engine).get_table_names())


def test_round_trip_upgrade_downgrade_twice(db_url):
    db = Database(db_url)
    for _ in range(2):
        upgrade(db)
        assert current_revisions(db) == (head_revision(),)
        assert set(SQLModel.metadata.tables) <= _tables(db)
        downgrade(db, "base")
        assert current_revisions(db) == ()
        assert _tables(db) <= {"alembic_version"}
    db.dispose()


def test_models_and_migrated_schema_agree(database):
    with database.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    assert diff == []


def test_sqlite_pragmas(sqlite_url):
    db = Database(sqlite_url)
    ensure_schema(db)
    with db.read() as s:
        assert s.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1
        assert s.execute(sa.text("PRAGMA busy_timeout")).scalar() == 60_000  # the README's 60 s
        assert s.execute(sa.text("PRAGMA foreign_key_check")).all() == []
    with db.write() as s:
        assert s.execute(sa.text("PRAGMA busy_timeout")).scalar() == 60_000


def test_newer_revision_is_refused(db_url):
    db = Database(db_url)
    ensure_schema(db)
    with db.write() as s:
        s.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(DatabaseError, match="newer carlos-reg"):
        ensure_schema(db)
    proc = run_cli("--db", db_url, "loras")
    assert proc.returncode == 1
    assert "f00dfeed" in proc.stderr and "newer carlos-reg" in proc.stderr
    assert "Traceback" not in proc.stderr
    db.dispose()


def test_db_commands(sqlite_url):
    assert "empty" in run_cli("--db", sqlite_url, "db", "current").stdout
    proc = run_cli("--db", sqlite_url, "db", "upgrade", check=True)
    assert head_revision() in proc.stderr
    doc = __import__("json").loads(
        run_cli("--db", sqlite_url, "db", "current", "--json", check=True).stdout
    )
    assert doc["current"] == [head_revision()] and doc["up_to_date"] is True
    run_cli("--db", sqlite_url, "db", "downgrade", "base", check=True)
    doc = __import__("json").loads(
        run_cli("--db", sqlite_url, "db", "current", "--json", check=True).stdout
    )
    assert doc["current"] == []
    proc = run_cli("--db", sqlite_url, "db", "downgrade", "nosuchrev")
    assert proc.returncode != 0 and "unknown revision" in proc.stderr


def test_other_commands_upgrade_an_empty_database(sqlite_url):
    run_cli("--db", sqlite_url, "loras", "--json", check=True)
    db = Database(sqlite_url)
    assert current_revisions(db) == (head_revision(),)
    db.dispose()


@pytest.mark.postgres
def test_concurrent_upgrades_on_postgres_wait_for_each_other(pg_url):
    """Two processes upgrade one empty database at once: one migrates, the other finds it done."""
    code = (
        "import sys; from registry.db import Database; from registry.migrate import upgrade, current_revisions;"
        "db = Database(sys.argv[1]); upgrade(db); print(current_revisions(db)[0])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, pg_url],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == head_revision()
    db = Database(pg_url)
    assert current_revisions(db) == (head_revision(),)
    db.dispose()
