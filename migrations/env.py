"""Alembic environment.

Runs on the connection that ``registry.migrate`` hands over in ``config.attributes``. On
PostgreSQL an advisory lock makes concurrent upgrades wait for each other; the waiter then
reads the new revision and has nothing left to do. SQLite runs in batch mode with foreign-key
enforcement off for the duration (table rebuilds would otherwise cascade).
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import registry.columns
import registry.models  # noqa: F401  (fills SQLModel.metadata)

MIGRATION_LOCK_ID = (
    0x0CA1205  # arbitrary, constant: one advisory lock for all carlos-reg migrations
)

target_metadata = SQLModel.metadata


def render_item(type_, obj, autogen_context):
    """Render project column types as plain SQLAlchemy types, so old revisions never import new code."""
    if type_ == "type" and isinstance(obj, registry.columns.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and type(obj).__module__.startswith("sqlmodel"):
        return f"sa.String(length={obj.length})" if getattr(obj, "length", None) else "sa.String()"
    return False


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    is_sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=is_sqlite,
        transactional_ddl=True,
        compare_type=True,
        compare_server_default=False,
        render_item=render_item,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # transaction-scoped: released at commit, held while the other process would read the revision
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit(
        "offline (SQL script) migrations are not supported; run `carlos-reg db upgrade`"
    )
run_migrations_online()
