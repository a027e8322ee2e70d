"""How the registry's columns are typed and its constraints named, for every table in
``registry.models``: UTC timestamps, JSON documents, and names Alembic can find again.
"""

from __future__ import annotations

from datetime import timezone

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Named constraints let Alembic batch mode drop and recreate them on SQLite.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator):
    """A DateTime that always comes back timezone-aware UTC (SQLite stores naive strings)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        if value is not None and dialect.name == "sqlite":
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


# Both build a fresh column for each table, so a field shared by several tables (a mixin) may use them.
def timestamp_field():
    """A nullable UTC timestamp (``UTCDateTime``)."""
    return Field(default=None, sa_type=UTCDateTime)


def json_field(default_factory=None):
    """A JSON document: nullable without ``default_factory``, else never null."""
    if default_factory is None:
        return Field(default=None, sa_type=sa.JSON, nullable=True)
    return Field(default_factory=default_factory, sa_type=sa.JSON, nullable=False)
