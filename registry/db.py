"""Engines and sessions for SQLite (default, one machine) and PostgreSQL (scale-out).

SQLite: WAL, busy_timeout, foreign keys on, and every write transaction starts with
``BEGIN IMMEDIATE`` so two writer processes queue on the lock instead of failing with
"database is locked" (a deferred transaction that reads and then writes cannot wait).
Reads use a second engine with deferred ``BEGIN``. PostgreSQL uses one pooled engine for both.

PostgreSQL connection pool: ``CARLOS_REG_DB_POOL=N`` is the most connections one process opens
(N stay open in the pool, no overflow beyond N; a thread that finds all N busy waits up to 30 s).
Without it each command picks what it needs (``App.default_pool_size``): ``signer work`` 3 (its
main loop and the heartbeat thread, one spare), ``serve`` its API threads + 4 (nightly run, its
lease heartbeat, the crawler's writer, a local signer's heartbeat), other commands 5. Size the
server's ``max_connections`` as the sum over all processes. Stale connections (after a database
restart) are detected on checkout (``pool_pre_ping``) and replaced; see ``registry.retry`` for
riding out the outage itself.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlmodel import Session

from registry.errors import DatabaseError, UsageError, first_line
from registry.retry import RetryPolicy
from registry.settings import environment

SQLITE_BUSY_TIMEOUT_MS = 60_000
DEFAULT_POOL_SIZE = 5
POOL_ENV = "CARLOS_REG_DB_POOL"


def pool_size_setting(default: int = DEFAULT_POOL_SIZE) -> int:
    """``$CARLOS_REG_DB_POOL`` if set (a positive integer), else ``default``."""
    raw = environment().get(POOL_ENV)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(
            f"{POOL_ENV}={raw!r}: give the number of database connections per process (1 or more)"
        )
    return value


def redact_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL may hold a password anywhere: show only the scheme
        return url.split(":", 1)[0] + ":…"


def _ensure_wal(cur) -> None:
    """Switch the file to WAL, riding out SQLITE_BUSY.

    Changing the journal mode needs an exclusive lock, and SQLite returns "database is locked"
    at once, without calling the busy handler, when that would deadlock with another connection
    (e.g. two processes opening a fresh registry together): so wait and retry here, up to the
    same deadline the busy timeout gives ordinary statements.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    for delay in RetryPolicy(initial=0.005, cap=0.25, jitter=0.5, deadline=None).delays():
        try:
            mode = cur.execute("PRAGMA journal_mode").fetchall()[0][0]
            if str(mode).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            message = str(exc).lower()
            if ("locked" not in message and "busy" not in message) or time.monotonic() > deadline:
                raise
        time.sleep(delay)


def _read_only_filesystem(path: Path) -> bool:
    """The registry file sits on a read-only filesystem (a read-only mount, a snapshot, a CD)."""
    try:
        return path.is_file() and bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _sqlite_engine(url: sa.URL, *, write: bool) -> Engine:
    read_only = False
    if url.database and url.database != ":memory:":
        path = Path(url.database).expanduser()
        # On a read-only filesystem no one can write: SQLite may then skip its locks and the WAL
        # index (which it could not create there), so read commands still work.
        read_only = _read_only_filesystem(path)
        folder = path.parent
        try:
            if not read_only:
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseError(
                f"cannot create the folder of the SQLite registry {folder}: {exc.strerror}"
            ) from None
    extra = {}
    if read_only:
        uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro&immutable=1"
        extra["creator"] = lambda: sqlite3.connect(
            uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
    engine = sa.create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_pre_ping=False,
        **extra,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # autocommit at the driver; we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if not read_only:
            _ensure_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    begin_sql = "BEGIN IMMEDIATE" if write else "BEGIN"

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql(begin_sql)

    return engine


def create_engines(url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> tuple[Engine, Engine]:
    """Return ``(write_engine, read_engine)`` for a SQLAlchemy URL (``pool_size``: PostgreSQL only)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"not a database URL: {redact_url(url)} ({exc})") from None
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(parsed, write=True), _sqlite_engine(parsed, write=False)
        if backend == "postgresql":
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            engine = sa.create_engine(
                parsed,
                pool_pre_ping=True,  # survive a database restart: stale connections are replaced
                pool_size=pool_size,
                max_overflow=0,  # pool_size is the process's ceiling: predictable for max_connections
                pool_recycle=1800,
                # TCP keepalives: a server that vanished without closing (host down, network cut) is
                # noticed in about a minute instead of the kernel's ~15 min, and the retry takes over
                connect_args={
                    "connect_timeout": 10,
                    "application_name": "carlos-reg",
                    "keepalives": 1,
                    "keepalives_idle": 30,
                    "keepalives_interval": 10,
                    "keepalives_count": 3,
                },
            )
            return engine, engine
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        raise DatabaseError(f"cannot use database URL {redact_url(url)}: {exc}") from None
    raise DatabaseError(
        f"unsupported database {redact_url(url)}: use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
    )


def describe_operational_error(url: str, exc: BaseException) -> DatabaseError:
    reason = first_line(getattr(exc, "orig", None) or exc, default=type(exc).__name__)
    return DatabaseError(f"cannot reach the registry database {redact_url(url)}: {reason}")


class Database:
    """The registry's engines; hands out sessions for reading or writing."""

    def __init__(self, url: str, *, pool_size: int | None = None):
        """``pool_size`` (PostgreSQL): connections this process may open; default ``$CARLOS_REG_DB_POOL`` or 5."""
        self.url = url
        self.pool_size = pool_size if pool_size is not None else pool_size_setting()
        self.engine, self.read_engine = create_engines(url, pool_size=self.pool_size)
        self.dialect = self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A session in one write transaction: committed on success, rolled back on error."""
        with self._guard(), Session(self.engine, expire_on_commit=False) as session:
            with session.begin():
                yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._guard(), Session(self.read_engine, expire_on_commit=False) as session:
            yield session

    @contextlib.contextmanager
    def _guard(self):
        try:
            yield
        except OperationalError as exc:
            if _is_connect_failure(exc):
                raise describe_operational_error(self.url, exc) from exc
            raise

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()


def _is_connect_failure(exc: OperationalError) -> bool:
    text = str(exc.orig or exc).lower()
    return any(
        s in text
        for s in (
            "connection refused",
            "could not connect",
            "unable to open database",
            "connection failed",
            "could not translate host",
            "timeout expired",
            "does not exist",
            "password authentication",
            "server closed the connection",
            "terminating connection",
            "no such host",
        )
    )


def insert_or_ignore(dialect: str, table: sa.Table, keys: list[str]):
    """``INSERT … ON CONFLICT (keys) DO NOTHING`` in the dialect's own syntax (SQLite, PostgreSQL);
    add ``.values(...)`` / ``.returning(...)`` as with any insert."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing(index_elements=keys)
