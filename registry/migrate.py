"""Schema upgrades through Alembic, programmatically (works from an installed package).

Every command calls ``ensure_schema``: an empty or older database is upgraded in place; a
database at a revision this code does not know (written by a newer carlos-reg) is refused.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import OperationalError

from registry.db import Database, describe_operational_error
from registry.errors import DatabaseError

_MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def _config(connection=None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    return script_directory().get_current_head()


def current_revisions(db: Database) -> tuple[str, ...]:
    try:
        with db.read_engine.connect() as conn:  # a read: no write lock on SQLite
            heads = MigrationContext.configure(conn).get_current_heads()
            conn.rollback()
            return tuple(heads)
    except OperationalError as exc:
        raise describe_operational_error(db.url, exc) from exc


def _sqlite_pragma(conn, sql: str) -> None:
    """Run a PRAGMA on the driver connection, outside any transaction, as SQLite requires for
    ``foreign_keys`` (``conn.exec_driver_sql`` would first BEGIN, and the PRAGMA would do nothing)."""
    conn.connection.driver_connection.execute(sql)


def _run(db: Database, fn, *args) -> None:
    try:
        with db.engine.connect() as conn:
            if db.is_sqlite:
                _sqlite_pragma(
                    conn, "PRAGMA foreign_keys=OFF"
                )  # table rebuilds must not cascade or fail
            try:
                fn(_config(conn), *args)
                conn.commit()
            finally:
                if db.is_sqlite:
                    conn.rollback()
                    _sqlite_pragma(conn, "PRAGMA foreign_keys=ON")
    except OperationalError as exc:
        raise describe_operational_error(db.url, exc) from exc


def upgrade(db: Database, revision: str = "head") -> None:
    _refuse_unknown(db)
    _run(db, command.upgrade, revision)


def downgrade(db: Database, revision: str) -> None:
    _refuse_unknown(db)
    try:
        script_directory().get_revision(revision) if revision not in (
            "base",
        ) and not revision.startswith("-") else None
    except Exception:
        raise DatabaseError(
            f"unknown revision {revision!r}; see `carlos-reg db current` and migrations/versions/"
        ) from None
    _run(db, command.downgrade, revision)


def _refuse_unknown(db: Database) -> tuple[str, ...]:
    current = current_revisions(db)
    script = script_directory()
    for rev in current:
        try:
            known = script.get_revision(rev)
        except Exception:
            known = None
        if known is None:
            raise DatabaseError(
                f"the registry database is at schema revision {rev}, which this carlos-reg does not know "
                f"(its newest is {script.get_current_head()}); it was written by a newer carlos-reg — upgrade carlos-reg"
            )
    return current


def ensure_schema(db: Database) -> None:
    """Upgrade an empty or older database to head; refuse one from a newer carlos-reg."""
    current = _refuse_unknown(db)
    if current != (head_revision(),):
        _run(db, command.upgrade, "head")
