"""Named leases in the database: mutual exclusion across processes and machines.

A lock is a row with an owner, a random token and an expiry on the database clock. Taking it
is one atomic upsert that succeeds only if the row is absent or expired; the holder extends it
with ``heartbeat`` and gives it up with ``release``. A holder that dies simply stops renewing,
and the lock frees itself after ``ttl`` seconds.
"""

from __future__ import annotations

import secrets
import threading

import sqlalchemy as sa

from registry.db import Database
from registry.queue import db_now_sql


class DbLock:
    def __init__(self, db: Database, name: str, owner: str, ttl: float = 120.0):
        self.db = db
        self.name = name
        self.owner = owner
        self.ttl = float(ttl)
        self.token: str | None = None
        self._now = db_now_sql(db.dialect)
        self._beat: threading.Thread | None = None
        self._stop = threading.Event()

    def acquire(self) -> bool:
        token = secrets.token_hex(16)
        sql = (
            f"INSERT INTO service_lock (name, owner, token, expires_at) VALUES (:name, :owner, :token, {self._now} + :ttl) "
            f"ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, token = excluded.token, "
            f"expires_at = excluded.expires_at WHERE service_lock.expires_at < {self._now} RETURNING token"
        )
        with self.db.write() as session:
            row = session.execute(
                sa.text(sql),
                {"name": self.name, "owner": self.owner, "token": token, "ttl": self.ttl},
            ).first()
        if row is None or row[0] != token:
            return False
        self.token = token
        return True

    def heartbeat(self) -> bool:
        if self.token is None:
            return False
        sql = f"UPDATE service_lock SET expires_at = {self._now} + :ttl WHERE name = :name AND token = :token"
        with self.db.write() as session:
            held = (
                session.execute(
                    sa.text(sql), {"ttl": self.ttl, "name": self.name, "token": self.token}
                ).rowcount
                == 1
            )
        if not held:
            self.token = None
        return held

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        if self.token is not None:
            with self.db.write() as session:
                session.execute(
                    sa.text("DELETE FROM service_lock WHERE name = :name AND token = :token"),
                    {"name": self.name, "token": self.token},
                )
            self.token = None

    def keep_alive(self, every: float | None = None) -> None:
        """Renew the lease from a background thread until ``release``."""
        interval = every or self.ttl / 3

        def beat():
            while not self._stop.wait(interval):
                try:
                    if not self.heartbeat():
                        return
                except Exception:  # a database hiccup: try again at the next beat
                    continue

        self._stop.clear()
        self._beat = threading.Thread(target=beat, name=f"lock-{self.name}", daemon=True)
        self._beat.start()

    def holder(self) -> dict | None:
        with self.db.read() as session:
            row = session.execute(
                sa.text(
                    f"SELECT owner, expires_at - {self._now} FROM service_lock WHERE name = :name"
                ),
                {"name": self.name},
            ).first()
        if row is None or row[1] < 0:
            return None
        return {"owner": row[0], "expires_in": float(row[1])}
