"""What every command receives: the settings, and the registry opened on first use."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import click

from registry.settings import Settings

if TYPE_CHECKING:  # the database layer (SQLAlchemy) loads on first use, not for --help
    from registry.db import Database


class App:
    #: PostgreSQL connections this process may open unless ``$CARLOS_REG_DB_POOL`` says otherwise;
    #: a command sets it before it first touches ``db`` (``signer work``: 3, ``serve``: threads + 4).
    default_pool_size: int = 5

    def __init__(self, settings: Settings):
        self.settings = settings

    @cached_property
    def raw_db(self) -> Database:
        """The database as it is, without migrating (for the ``db`` commands)."""
        from registry.db import Database, pool_size_setting

        return Database(self.settings.db_url, pool_size=pool_size_setting(self.default_pool_size))

    @cached_property
    def db(self) -> Database:
        """The database, upgraded to the current schema if it is empty or older."""
        from registry.migrate import ensure_schema

        ensure_schema(self.raw_db)
        return self.raw_db

    @cached_property
    def queue(self):
        from registry.queue import JobQueue

        return JobQueue(self.db)

    def close(self) -> None:
        if "raw_db" in self.__dict__:
            self.raw_db.dispose()


pass_app = click.make_pass_decorator(App)
